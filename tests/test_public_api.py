"""The public surface: what `import tenantstore` offers, and how it presents itself.

Cf. httpx ``tests/test_exported_members.py``: one sorted ``__all__``, every name in it
real, every public class reporting ``__module__ == "tenantstore"``, and the error tree
exactly as documented.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import types
from pathlib import Path

import pytest

import tenantstore
import tenantstore.errors
from tenantstore import (
    AdminUserNotFound,
    CipherError,
    Conflict,
    DatabaseUnreachable,
    InvalidCredentials,
    InvalidInput,
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
        InvalidCredentials("invalid username or password"),
    ]


@pytest.mark.parametrize("error", some_errors(), ids=lambda e: type(e).__name__)
def test_errors_survive_pickle_and_copy(error: TenantStoreError) -> None:
    """Errors cross process boundaries (executors, task queues) and get copied."""
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        if isinstance(error, InvalidInput):
            assert isinstance(clone, InvalidInput)
            assert clone.field == error.field
            assert clone.rule == error.rule


def test_the_package_is_typed() -> None:
    assert tenantstore.__file__ is not None
    assert (Path(tenantstore.__file__).parent / "py.typed").is_file()
