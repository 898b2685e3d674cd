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
import secrets
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
    InvalidInput,
    PostgresTenantRepository,
    Tenant,
    TenantNotFound,
    generate_api_key,
    hash_api_key,
)
from tenantstore._keys import _checksum
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


# -- a flood of forged keys ----------------------------------------------------


class Counting:
    """The PostgreSQL repository, counting the key lookups it runs (one query
    each): what a cache in front of it costs the database."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.queries = 0

    def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        self.queries += 1
        found: Tenant = self.real.get_by_api_key_hash(api_key_hash)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


FLOOD = 500


def test_a_flood_of_forged_keys_costs_a_query_each_and_evicts_no_tenant(
    pool: ConnectionPool,
) -> None:
    # Without a key secret: the checksum is public, so every distinct forged key
    # passes it and costs one query, then a negative slot (never a tenant's).
    inner = Counting(PostgresTenantRepository(pool))
    real = [generate_api_key() for _ in range(5)]
    for key in real:
        inner.create(Tenant(name="acme", api_key_hash=hash_api_key(key)))
    cache = CachedTenantRepository(inner, maxsize=5, negative_maxsize=50)
    for key in real:
        cache.get_by_api_key(key)
    for _ in range(FLOOD):
        with pytest.raises(TenantNotFound):
            cache.get_by_api_key(generate_api_key())
    assert inner.queries == len(real) + FLOOD
    stats = cache.stats()
    assert (stats.size, stats.negative_size, stats.evictions) == (5, 50, FLOOD - 50)
    for key in real:
        cache.get_by_api_key(key)
    assert inner.queries == len(real) + FLOOD  # every tenant still in memory


def forgeries(n: int) -> Iterator[str]:
    """Keys a forger can make without the secret: untagged, tagged under another
    secret, tagged at random (checksum right), and other formats."""
    other = secrets.token_bytes(32)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            yield generate_api_key()
        elif kind == 1:
            yield generate_api_key(secret=other)
        elif kind == 2:
            head = generate_api_key(secret=other)[:-12] + secrets.token_hex(3)
            yield head + _checksum(head)
        else:
            yield f"sk-{secrets.token_hex(24)}"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_with_a_key_secret_forged_keys_never_reach_the_store(
    pool: ConnectionPool, runner: asyncio.Runner, mode: str
) -> None:
    secret = secrets.token_bytes(32)
    inner = Counting(PostgresTenantRepository(pool))
    real = [generate_api_key(secret=secret) for _ in range(3)]
    made = [
        inner.create(Tenant(name="acme", api_key_hash=hash_api_key(k))) for k in real
    ]
    # Keys of every kind authenticate through the plain repository...
    assert inner.real.get_by_api_key(real[0]).id == made[0].id
    raw: Any = (
        CachedTenantRepository(inner, key_secret=[secret])
        if mode == "sync"
        else AsyncCachedTenantRepository(AsyncOver(inner), key_secret=secret)
    )
    cache = raw if mode == "sync" else Synced(raw, runner)
    for key, tenant in zip(real, made, strict=True):
        assert cache.get_by_api_key(key).id == tenant.id
    queries = inner.queries
    for forged in forgeries(FLOOD):
        with pytest.raises(TenantNotFound):
            cache.get_by_api_key(forged)
    # ...and through the cache only the secret's: the flood cost no query at all.
    assert inner.queries == queries
    stats = raw.stats()
    assert (stats.rejected, stats.negative_size, stats.size) == (FLOOD, 0, 3)


class AsyncOver:
    """A sync repository seen as an async one (for the async cache's inner)."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


def test_a_key_secret_is_checked() -> None:
    with pytest.raises(InvalidInput) as info:
        CachedTenantRepository(InMemoryTenantRepository(), key_secret=b"short")
    assert info.value.field == "key_secret"
    with pytest.raises(InvalidInput):
        generate_api_key(secret=b"")
