"""Hostile keys on every backend: lone surrogates, str subclasses, forged floods.

Every backend — in memory and PostgreSQL, plain and cached, sync and async — must
give one answer for each: a key with a lone surrogate is simply not found and no
exception chain holds it; a `str` subclass key is found exactly when the equal
`str` is (a hit and a miss alike), whatever its own methods say, while a key hash
must be a `str` itself; and a flood of distinct forged keys of our format costs
one query each, and evicts no real tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncInMemoryTenantRepository,
    AsyncPostgresTenantRepository,
    CachedTenantRepository,
    InMemoryTenantRepository,
    PostgresTenantRepository,
    Tenant,
    TenantNotFound,
    generate_api_key,
    hash_api_key,
)
from tests.fix_backends import Synced

BACKENDS = [
    f"{store}-{layer}-{mode}"
    for store in ("memory", "postgres")
    for layer in ("plain", "cached")
    for mode in ("sync", "async")
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, clean_db: str) -> Iterator[Any]:
    """A repository as `request.param` names it (async ones called as if sync)."""
    store, layer, mode = request.param.split("-")
    if mode == "sync":
        if store == "memory":
            repo: Any = InMemoryTenantRepository()
        else:
            pool: ConnectionPool = request.getfixturevalue("pool")
            repo = PostgresTenantRepository(pool)
        yield CachedTenantRepository(repo) if layer == "cached" else repo
        return
    runner: asyncio.Runner = request.getfixturevalue("runner")
    if store == "memory":
        arepo: Any = AsyncInMemoryTenantRepository()
    else:
        apool: AsyncConnectionPool = request.getfixturevalue("apool")
        arepo = AsyncPostgresTenantRepository(apool)
    yield Synced(
        AsyncCachedTenantRepository(arepo) if layer == "cached" else arepo, runner
    )


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it links to, through causes and contexts."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def holds(exc: BaseException, secret: str) -> bool:
    """True if any exception of the chain carries `secret` (or part of it)."""
    needle = secret[:20]
    for e in chain(exc):
        values = [*e.args, *vars(e).values(), getattr(e, "object", None)]
        if needle in repr(e) or any(needle in repr(v) for v in values):
            return True
    return False


def test_a_lone_surrogate_is_not_found_and_no_chain_holds_the_key(
    backend: Any,
) -> None:
    key = generate_api_key()
    backend.create(Tenant(name="acme", api_key_hash=hash_api_key(key)))
    for odd in (key + "\ud800", "\udfff" + key, key[:20] + "\ud800" + key[20:]):
        with pytest.raises(TenantNotFound) as info:
            backend.get_by_api_key(odd)
        assert not holds(info.value, odd)
        assert info.value.__context__ is None
        assert info.value.__cause__ is None


class Key(str):
    """A str subclass, as frameworks hand over (headers, enums, markup)."""


class Lying(str):
    """A str subclass whose own methods lie about its characters."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"someone else's key"

    def __str__(self) -> str:
        return "someone else's key"

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return True

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize("cls", [Key, Lying])
def test_a_str_subclass_key_is_found_as_its_characters(
    backend: Any, cls: type[str]
) -> None:
    key = generate_api_key()
    made = backend.create(Tenant(name="acme", api_key_hash=hash_api_key(cls(key))))
    assert made.api_key_hash == hash_api_key(key)
    # A miss, then (cached) a hit: the same answer both times.
    for _ in range(3):
        assert backend.get_by_api_key(cls(key)).id == made.id
    for _ in range(2):
        with pytest.raises(TenantNotFound):
            backend.get_by_api_key(cls(generate_api_key()))
    other = generate_api_key()
    with pytest.raises(TenantNotFound):
        backend.get_by_api_key(cls(other))
    backend.get_by_api_key(key)  # the plain str warms the cache, if any
    assert backend.get_by_api_key(cls(key)).id == made.id


@pytest.mark.parametrize("cls", [Key, Lying])
def test_a_str_subclass_hash_is_nobodys_hash(backend: Any, cls: type[str]) -> None:
    key = generate_api_key()
    backend.create(Tenant(name="acme", api_key_hash=hash_api_key(key)))
    assert backend.get_by_api_key_hash(hash_api_key(key)).name == "acme"  # warm
    for _ in range(2):  # a miss and what would be a hit: the same answer
        with pytest.raises(TenantNotFound):
            backend.get_by_api_key_hash(cls(hash_api_key(key)))
