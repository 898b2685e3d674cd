"""What a scenario is, what it is given, and the checks and floors scenarios share.

A `Scenario` names one comparison. Its `setup(context)` is a context manager that
builds what it needs (pools, repositories, engines, data) and yields the variants —
exactly one with role "ours"; the others are the floor, references and peers that
ours is divided by — and tears it all down afterwards. A scenario whose `requires`
names something `tenantstore` does not export yet (the cache, its async twin) is
reported as unavailable and plugs in by itself once the name exists.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import tenantstore
from benchmarks.data import Data, Sizes
from benchmarks.measure import CheckFailed, Variant
from benchmarks.placement import Placement
from tenantstore import Tenant

T = TypeVar("T")

__all__ = [
    "Context",
    "Scenario",
    "batches",
    "check_id_row",
    "check_tenant",
    "cycle",
    "export",
    "floor_lookup",
    "looped",
    "missing",
    "placeholders",
    "require_params",
]


@dataclass(frozen=True)
class Context:
    sizes: Sizes
    data: Data
    placement: Placement
    server_url: str
    batch: int  # operations per sample for in-process variants

    def pin(self) -> None:
        """Pin server processes started since the last call (new connections)."""
        self.placement.pin_server(self.server_url)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # str.format template over `s`, the run's Sizes
    setup: Callable[[Context], AbstractContextManager[Sequence[Variant]]]
    requires: tuple[str, ...] = ()  # names tenantstore must export
    quick: bool = True  # part of --quick
    database: bool = True  # needs PostgreSQL

    def title_for(self, sizes: Sizes) -> str:
        return self.title.format(s=sizes)


def missing(scenario: Scenario) -> list[str]:
    return [name for name in scenario.requires if not hasattr(tenantstore, name)]


def export(name: str) -> Any:
    """A name tenantstore may not export yet (its scenario `requires` it)."""
    return getattr(tenantstore, name)


def cycle(items: Sequence[T]) -> Callable[[int], T]:
    """The i-th argument of a series: the items in order, round and round."""
    n = len(items)
    return lambda i: items[i % n]


def check_tenant(expected: Callable[[Any], str]) -> Callable[[Any, Any], None]:
    """A check that the result is a Tenant with the id `expected(arg)`."""

    def check(arg: Any, result: Any) -> None:
        if type(result) is not Tenant or result.id != expected(arg):
            raise CheckFailed(f"expected tenant {expected(arg)}, got {result!r}")

    return check


def check_id_row(expected: Callable[[Any], str]) -> Callable[[Any, Any], None]:
    """A check that a raw row's first column is the id `expected(arg)`."""

    def check(arg: Any, result: Any) -> None:
        if result is None or result[0] != expected(arg):
            raise CheckFailed(f"expected a row of {expected(arg)}, got {result!r}")

    return check


def floor_lookup(table: dict[str, Tenant]) -> Callable[[str], Tenant | None]:
    """The floor of a cached key lookup: SHA-256 of the key, then `dict.get`.

    A plain function, as a hand-written cache would be: ours is a method call, so
    the floor pays one call too.
    """
    get = table.get
    sha256 = hashlib.sha256

    def floor(key: str) -> Tenant | None:
        return get(sha256(key.encode()).hexdigest())

    return floor


def looped(op: Callable[[str], Any]) -> Callable[[Sequence[str]], list[Any]]:
    """A batch of `op` calls, in the loop every in-process variant uses."""

    def batch(keys: Sequence[str]) -> list[Any]:
        out: list[Any] = []
        append = out.append
        for key in keys:
            append(op(key))
        return out

    return batch


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def placeholders(statement: str) -> set[str]:
    return set(_PLACEHOLDER.findall(statement))


def require_params(statement: str, params: dict[str, Any], what: str) -> None:
    """Fail early when tenantstore's SQL takes parameters a hand-written peer lacks."""
    lacking = placeholders(statement) - params.keys()
    if lacking:
        raise RuntimeError(
            f"{what}: tenantstore._sql now takes {sorted(lacking)}; update the "
            "hand-written peer in benchmarks/ to pass them"
        )


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """`items` cut into batches of `size` (the last, shorter one dropped)."""
    size = max(1, min(size, len(items)))
    return [items[i : i + size] for i in range(0, len(items) - size + 1, size)]
