"""The public surface: what `import tenantstore` offers, and how it presents itself.

Cf. httpx ``tests/test_exported_members.py``: one sorted ``__all__``, every name in it
real, every public class reporting ``__module__ == "tenantstore"``, and the error tree
exactly as documented.
"""

from __future__ import annotations

import copy
import enum
import inspect
import pickle
import types
from decimal import Decimal
from pathlib import Path

import pytest

import tenantstore
import tenantstore.errors
from tenantstore import (
    AdminUserNotFound,
    BudgetExceeded,
    CipherError,
    Conflict,
    DatabaseUnreachable,
    DirtyDatabase,
    InvalidCredentials,
    InvalidInput,
    MigrationError,
    StaleVersion,
    StoreUnavailable,
    TenantNotFound,
    TenantStoreError,
)

ALLOWED_DUNDERS = {"__version__"}
PUBLIC = [name for name in tenantstore.__all__ if not name.startswith("_")]
CLASSES = [name for name in PUBLIC if inspect.isclass(getattr(tenantstore, name, None))]

# The documented tree: each error, its bases in order.
ERROR_BASES: dict[type[Exception], tuple[type, ...]] = {
    TenantStoreError: (Exception,),
    TenantNotFound: (TenantStoreError, LookupError),
    AdminUserNotFound: (TenantStoreError, LookupError),
    InvalidCredentials: (TenantStoreError,),
    Conflict: (TenantStoreError,),
    StaleVersion: (Conflict,),
    InvalidInput: (TenantStoreError, ValueError),
    StoreUnavailable: (TenantStoreError,),
    DatabaseUnreachable: (StoreUnavailable,),
    CipherError: (TenantStoreError,),
    BudgetExceeded: (TenantStoreError,),
    MigrationError: (TenantStoreError,),
    DirtyDatabase: (MigrationError,),
}


def test_all_is_sorted_and_unique() -> None:
    assert tenantstore.__all__ == sorted(tenantstore.__all__)
    assert len(set(tenantstore.__all__)) == len(tenantstore.__all__)


@pytest.mark.parametrize("name", tenantstore.__all__)
def test_every_exported_name_exists(name: str) -> None:
    assert hasattr(tenantstore, name)
    assert getattr(tenantstore, name) is not None


def test_nothing_private_is_exported() -> None:
    private = [n for n in tenantstore.__all__ if n.startswith("_")]
    assert set(private) <= ALLOWED_DUNDERS
    assert isinstance(tenantstore.__version__, str)


def test_every_public_name_is_exported() -> None:
    """Submodules aside, nothing public is reachable that `__all__` leaves out."""
    reachable = {
        name
        for name, value in vars(tenantstore).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert reachable == set(PUBLIC)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from tenantstore import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(tenantstore.__all__)


def test_the_core_names_are_exported() -> None:
    expected = {
        "Tenant",
        "UsageRecord",
        "TenantRepository",
        "UsageRepository",
        "AsyncTenantRepository",
        "AsyncUsageRepository",
        "InMemoryTenantRepository",
        "InMemoryUsageRepository",
        "AsyncInMemoryTenantRepository",
        "AsyncInMemoryUsageRepository",
        "PostgresTenantRepository",
        "PostgresUsageRepository",
        "AsyncPostgresTenantRepository",
        "AsyncPostgresUsageRepository",
        "create_pool",
        "create_async_pool",
        "generate_api_key",
        "hash_api_key",
        "KeyCipher",
        "AdminUser",
        "InMemoryAdminUserRepository",
        "AsyncInMemoryAdminUserRepository",
        "PostgresAdminUserRepository",
        "AsyncPostgresAdminUserRepository",
        "AdminUserRepository",
        "AsyncAdminUserRepository",
        "AuditEvent",
        "has_permission",
        *(error.__name__ for error in ERROR_BASES),
    }
    assert expected <= set(tenantstore.__all__)


@pytest.mark.parametrize("name", CLASSES)
def test_public_classes_report_the_package_as_their_module(name: str) -> None:
    cls = getattr(tenantstore, name)
    assert cls.__module__ == "tenantstore"
    assert cls.__qualname__ == name
    # An enum's class repr names no module (`<enum 'RecordOutcome'>`): nothing to leak.
    if not issubclass(cls, enum.Enum):
        assert f"tenantstore.{name}" in repr(cls)


def test_there_are_public_classes_to_check() -> None:
    assert len(CLASSES) >= 20


@pytest.mark.parametrize("error", list(ERROR_BASES), ids=lambda e: e.__name__)
def test_error_bases_are_as_documented(error: type[Exception]) -> None:
    assert error.__bases__ == ERROR_BASES[error]
    assert issubclass(error, TenantStoreError)
    assert error.__name__ in tenantstore.__all__
    assert error.__doc__


def test_every_exported_exception_is_in_the_tree() -> None:
    exported = {
        cls
        for name in CLASSES
        if issubclass(cls := getattr(tenantstore, name), BaseException)
    }
    assert exported == set(ERROR_BASES)


def test_the_errors_module_docstring_draws_the_tree() -> None:
    doc = tenantstore.errors.__doc__
    assert doc is not None
    for error in ERROR_BASES:
        assert error.__name__ in doc


def test_a_stale_version_is_a_conflict_a_duplicate_is_not_stale() -> None:
    # Callers retry a StaleVersion (read again, reapply) and not a duplicate;
    # handlers written for Conflict keep catching both.
    with pytest.raises(Conflict):
        raise StaleVersion("stale")
    assert not issubclass(Conflict, StaleVersion)
    doc = tenantstore.errors.__doc__
    assert doc is not None
    assert "│   └── StaleVersion" in doc


def test_dual_bases_keep_existing_handlers_working() -> None:
    with pytest.raises(LookupError):
        raise TenantNotFound("no such tenant")
    with pytest.raises(ValueError, match="name: must not be blank"):
        raise InvalidInput("name", "must not be blank")


def some_errors() -> list[TenantStoreError]:
    return [
        TenantStoreError("unmapped"),
        TenantNotFound("no such tenant"),
        Conflict("duplicate"),
        StaleVersion("the tenant changed since it was read"),
        InvalidInput("allowed_models[1]", "must not be blank"),
        StoreUnavailable("pool exhausted"),
        CipherError("tampered"),
        AdminUserNotFound("no such admin user"),
        MigrationError("002 failed", version=2, file="002_contract.up.sql"),
        DirtyDatabase(7),
        InvalidCredentials("invalid username or password"),
        BudgetExceeded(
            "0b7a9e0c-0000-4000-8000-000000000001",
            Decimal("10.00"),
            Decimal("9.5"),
            Decimal("0.4"),
            Decimal("0.2"),
        ),
    ]


@pytest.mark.parametrize("error", some_errors(), ids=lambda e: type(e).__name__)
def test_errors_survive_pickle_and_copy(error: TenantStoreError) -> None:
    """Errors cross process boundaries (executors, task queues) and get copied."""
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        if isinstance(error, MigrationError):
            assert isinstance(clone, MigrationError)
            assert (clone.version, clone.file) == (error.version, error.file)
        if isinstance(error, InvalidInput):
            assert isinstance(clone, InvalidInput)
            assert clone.field == error.field
            assert clone.rule == error.rule
        if isinstance(error, BudgetExceeded):
            assert isinstance(clone, BudgetExceeded)
            assert (clone.budget_usd, clone.spent_usd, clone.held_usd) == (
                error.budget_usd,
                error.spent_usd,
                error.held_usd,
            )


def test_the_package_is_typed() -> None:
    assert tenantstore.__file__ is not None
    assert (Path(tenantstore.__file__).parent / "py.typed").is_file()


def _package_modules() -> list[types.ModuleType]:
    import importlib
    import pkgutil

    names = [
        info.name
        for info in pkgutil.walk_packages(tenantstore.__path__, "tenantstore.")
        if info.name != "tenantstore.__main__"
    ]
    return [importlib.import_module(name) for name in names]


# The modules a user imports by name; every other module is private (`_name`).
PUBLIC_MODULES = {
    "tenantstore.cli",
    "tenantstore.errors",
    "tenantstore.metrics",
    "tenantstore.migrate",
    "tenantstore.pool",
}


def _classes_defined_in(module: types.ModuleType) -> list[str]:
    """The top-level classes a module's source defines (a class's `__module__` is
    "tenantstore" for the public ones, so the source is what says where)."""
    import ast

    path = inspect.getsourcefile(module)
    assert path is not None
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef)]


def test_every_exception_is_defined_in_errors_py() -> None:
    """One tree: no module but errors.py defines an exception a caller could
    meet (a private one, `_Name`, stays inside the module that raises it)."""
    defined = {
        (module.__name__, name)
        for module in _package_modules()
        for name in _classes_defined_in(module)
        if not name.startswith("_") and issubclass(getattr(module, name), BaseException)
    }
    assert {module for module, _ in defined} == {"tenantstore.errors"}
    assert {getattr(tenantstore.errors, name) for _, name in defined} == set(
        ERROR_BASES
    )


def test_only_the_documented_modules_are_public() -> None:
    public = {
        module.__name__
        for module in _package_modules()
        if not any(part.startswith("_") for part in module.__name__.split("."))
        and module.__name__.count(".") == 1
    }
    assert public == PUBLIC_MODULES


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES))
def test_a_public_module_exposes_only_its_all(name: str) -> None:
    """Whatever a public module defines or imports under a public name is in its
    `__all__`: no helper leaks from it."""
    import importlib

    module = importlib.import_module(name)
    exported = {id(getattr(tenantstore, attr)) for attr in tenantstore.__all__}
    exposed = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and attr not in {"annotations", "TYPE_CHECKING"}
        # Not ours (the standard library's, a driver's), or ours and public in
        # `tenantstore` itself: not a helper.
        and str(getattr(value, "__module__", "tenantstore")).startswith("tenantstore")
        and id(value) not in exported
    }
    declared = set(getattr(module, "__all__", ()))
    assert exposed - declared == set()
    assert declared <= set(vars(module))
