"""In-process lookups: the cache's hit and negative hit, and the in-memory backend;
and the cache's miss, which fills from PostgreSQL.

Each in-process lookup is compared with the floor of a cached key lookup — SHA-256
of the key and one `dict.get`, in a plain function over a dict holding the same
entries — measured in batches with the same loop (see `scenario.looped`). The cache
is built with TTLs far
longer than the run, so that every timed call is a hit: what a hit costs, not how
often one happens. The working set is the same 1,000 keys (fewer in tiny mode) for
ours and the floor, filled before the clock starts.

The miss (`cache-miss`) is the other end: a cache whose entries expire a
microsecond after their fill started (`MISS_TTL`, on the system clock), so that every
lookup is the first one after expiry and fills from PostgreSQL, against the uncached
`PostgresTenantRepository` lookup of the same keys on the same pool (the floor).
Every result is checked, and that it took exactly one fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import tenantstore
from benchmarks.data import make_tenants
from benchmarks.measure import (
    CheckFailed,
    Target,
    Variant,
    async_batched,
    batched,
    per_call,
)
from benchmarks.scenario import (
    Context,
    Scenario,
    batches,
    check_tenant,
    cycle,
    export,
    floor_lookup,
    looped,
)
from tenantstore import (
    InMemoryTenantRepository,
    PostgresTenantRepository,
    Tenant,
    TenantNotFound,
    create_async_pool,
    create_pool,
    generate_api_key,
)

__all__ = ["SCENARIOS"]

WORKING_SET = 1_000
# Issue 11: the hit path over tenants with an expiry and a key in grace stays
# within 1.5x of the floor (stage one asked for 2x).
HIT_TARGET = Target(1.5, "≤ 1.5x")
FLOOR_LABEL = "floor: sha256(key) + dict.get"
MISS_TTL = 1e-6  # seconds: expired before the fill that stored it returns


def cache_options(cls: Callable[..., Any]) -> dict[str, Any]:
    """TTLs longer than any run and room for every key, where the class takes them."""
    wanted = {"ttl": 86_400.0, "negative_ttl": 86_400.0, "maxsize": 100_000}
    accepted = inspect.signature(cls).parameters
    return {k: v for k, v in wanted.items() if k in accepted}


def _close(obj: object) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        close()


def _working_keys(ctx: Context) -> tuple[list[str], dict[str, Tenant]]:
    lookup = ctx.data.lookup()
    keys = lookup.tenants.keys[: min(WORKING_SET, len(lookup.tenants.keys))]
    keys = random.Random(4).sample(keys, len(keys))
    return keys, lookup.tenants.by_key


def _negatives(
    get: Callable[[str], Any],
) -> Callable[[Sequence[str]], list[Any]]:
    """The batch loop for lookups that must raise TenantNotFound (None each)."""

    def batch(keys: Sequence[str]) -> list[Any]:
        out: list[Any] = []
        append = out.append
        for key in keys:
            try:
                append(get(key))
            except TenantNotFound:
                append(None)
        return out

    return batch


def _check_none(key: str, result: object) -> None:
    if result is not None:
        raise CheckFailed(f"expected no tenant, got {result!r}")


def _hit_variants(
    ctx: Context,
    label: str,
    get: Callable[[str], Tenant],
    keys: list[str],
    found: dict[str, Tenant],
    target: Target | None = HIT_TARGET,
) -> list[Variant]:
    """Ours (`get`) against the floor over `found` (key -> tenant), hits only."""
    table = {t.api_key_hash: t for t in found.values()}
    check = check_tenant(lambda key: found[key].id)
    cut = batches(keys, ctx.batch)
    return [
        Variant(label, "ours", batched(looped(get), cut, check)),
        Variant(
            FLOOR_LABEL,
            "floor",
            batched(looped(floor_lookup(table)), cut, check),
            target=target,
        ),
    ]


@contextlib.contextmanager
def cache_hit(ctx: Context) -> Iterator[list[Variant]]:
    keys, by_key = _working_keys(ctx)
    with create_pool(ctx.data.lookup().url) as pool:
        cls = export("CachedTenantRepository")
        cached = cls(PostgresTenantRepository(pool), **cache_options(cls))
        try:
            found = {key: cached.get_by_api_key(key) for key in keys}  # fill
            right = check_tenant(lambda k: by_key[k].id)
            for key in keys:
                right(key, found[key])
            yield _hit_variants(
                ctx,
                "CachedTenantRepository(Postgres) hit",
                cached.get_by_api_key,
                keys,
                found,
            )
        finally:
            _close(cached)


@contextlib.contextmanager
def cache_negative(ctx: Context) -> Iterator[list[Variant]]:
    keys, by_key = _working_keys(ctx)
    unknown = [generate_api_key() for _ in keys]
    with create_pool(ctx.data.lookup().url) as pool:
        cls = export("CachedTenantRepository")
        cached = cls(PostgresTenantRepository(pool), **cache_options(cls))
        try:
            table = {t.api_key_hash: t for t in by_key.values()}
            _negatives(cached.get_by_api_key)(unknown)  # fill the negative entries
            cut = batches(unknown, ctx.batch)
            yield [
                Variant(
                    "CachedTenantRepository(Postgres) negative hit",
                    "ours",
                    batched(_negatives(cached.get_by_api_key), cut, _check_none),
                    note="raises TenantNotFound",
                ),
                Variant(
                    FLOOR_LABEL + " (miss)",
                    "floor",
                    batched(looped(floor_lookup(table)), cut, _check_none),
                ),
            ]
        finally:
            _close(cached)


@contextlib.contextmanager
def cache_miss(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    by_key = lookup.tenants.by_key
    keys = random.Random(6).sample(lookup.tenants.keys, len(lookup.tenants.keys))
    arg = cycle(keys)
    check = check_tenant(lambda key: by_key[key].id)
    with create_pool(lookup.url) as pool:
        repo = PostgresTenantRepository(pool)
        cls = export("CachedTenantRepository")
        cached = cls(repo, **{**cache_options(cls), "ttl": MISS_TTL})
        fills = cached.stats().fills

        def check_filled(key: str, result: Any) -> None:
            nonlocal fills
            check(key, result)
            now = cached.stats().fills
            if now != fills + 1:
                raise CheckFailed(f"expected one fill, got {now - fills}")
            fills = now

        try:
            yield [
                Variant(
                    "CachedTenantRepository(Postgres) miss, fills",
                    "ours",
                    per_call(cached.get_by_api_key, arg, check_filled),
                    note=f"every entry expired (ttl {MISS_TTL:g} s)",
                ),
                Variant(
                    "floor: PostgresTenantRepository.get_by_api_key",
                    "floor",
                    per_call(repo.get_by_api_key, arg, check),
                    note="no cache, same pool",
                ),
            ]
        finally:
            _close(cached)


def _memory_repo(ctx: Context) -> tuple[InMemoryTenantRepository, list[str]]:
    n = min(WORKING_SET, ctx.sizes.tenants)
    made = make_tenants(n, "memory")
    repo = InMemoryTenantRepository()
    for key, t in zip(made.keys, made.tenants, strict=True):
        # Created with the key it replaced, then rotated: in grace, as in PostgreSQL.
        assert t.previous_api_key_hash is not None
        repo.create(dataclasses.replace(t, api_key_hash=t.previous_api_key_hash))
        repo.rotate_api_key(
            t.id, key, grace=timedelta(days=30), expires_at=t.api_key_expires_at
        )
    return repo, random.Random(5).sample(made.keys, n)


@contextlib.contextmanager
def memory_lookup(ctx: Context) -> Iterator[list[Variant]]:
    repo, keys = _memory_repo(ctx)
    found = {key: repo.get_by_api_key(key) for key in keys}
    yield _hit_variants(
        ctx,
        "InMemoryTenantRepository.get_by_api_key",
        repo.get_by_api_key,
        keys,
        found,
        target=None,
    )


@contextlib.contextmanager
def cache_hit_memory(ctx: Context) -> Iterator[list[Variant]]:
    inner, keys = _memory_repo(ctx)
    cls = export("CachedTenantRepository")
    cached = cls(inner, **cache_options(cls))
    try:
        found = {key: cached.get_by_api_key(key) for key in keys}
        yield _hit_variants(
            ctx,
            "CachedTenantRepository(InMemory) hit",
            cached.get_by_api_key,
            keys,
            found,
        )
    finally:
        _close(cached)


@contextlib.contextmanager
def async_cache_hit(ctx: Context) -> Iterator[list[Variant]]:
    keys, _ = _working_keys(ctx)
    url = ctx.data.lookup().url
    with asyncio.Runner() as runner:
        pool = runner.run(create_async_pool(url))
        cls = export("AsyncCachedTenantRepository")
        cached = cls(
            tenantstore.AsyncPostgresTenantRepository(pool), **cache_options(cls)
        )
        try:
            get = cached.get_by_api_key

            async def fill() -> dict[str, Tenant]:
                return {key: await get(key) for key in keys}

            found = runner.run(fill())
            table = {t.api_key_hash: t for t in found.values()}
            sync_floor = floor_lookup(table)

            async def floor(key: str) -> Tenant | None:
                return sync_floor(key)

            def aloop(
                op: Callable[[str], Any],
            ) -> Callable[[Sequence[str]], Any]:
                async def batch(keys: Sequence[str]) -> list[Any]:
                    out: list[Any] = []
                    append = out.append
                    for key in keys:
                        append(await op(key))
                    return out

                return batch

            check = check_tenant(lambda key: found[key].id)
            cut = batches(keys, ctx.batch)
            yield [
                Variant(
                    "AsyncCachedTenantRepository(Postgres) hit",
                    "ours",
                    async_batched(runner, aloop(get), cut, check),
                ),
                Variant(
                    FLOOR_LABEL + ", in an async def",
                    "floor",
                    async_batched(runner, aloop(floor), cut, check),
                    target=HIT_TARGET,
                ),
            ]
        finally:
            aclose = getattr(cached, "aclose", None)
            if callable(aclose):
                runner.run(aclose())
            else:
                _close(cached)
            runner.run(pool.close())


SCENARIOS = (
    Scenario(
        "cache-hit",
        "get_by_api_key, cached hit (CachedTenantRepository over PostgreSQL)",
        cache_hit,
        requires=("CachedTenantRepository",),
    ),
    Scenario(
        "cache-negative",
        "get_by_api_key, cached negative hit (unknown key)",
        cache_negative,
        requires=("CachedTenantRepository",),
    ),
    Scenario(
        "cache-miss",
        "get_by_api_key, cache miss filled from PostgreSQL (first lookup after "
        "expiry), {s.tenants:,} tenants",
        cache_miss,
        requires=("CachedTenantRepository",),
    ),
    Scenario(
        "cache-hit-memory",
        "get_by_api_key, cached hit (CachedTenantRepository over in-memory)",
        cache_hit_memory,
        requires=("CachedTenantRepository",),
        database=False,
    ),
    Scenario(
        "memory-lookup",
        "get_by_api_key, in-memory backend, no cache",
        memory_lookup,
        database=False,
    ),
    Scenario(
        "async-cache-hit",
        "async get_by_api_key, cached hit (AsyncCachedTenantRepository)",
        async_cache_hit,
        requires=("AsyncCachedTenantRepository",),
    ),
)
