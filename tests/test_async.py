"""Concurrency of the async PostgreSQL backend: cancellation leaks nothing.

The async twins' results are checked by the contract and differential suites;
these native async tests are about what only asyncio can do to them.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from tenantstore import (
    AsyncPostgresTenantRepository,
    Tenant,
    create_async_pool,
    generate_api_key,
    hash_api_key,
)


async def wait_for_lock_waiter(url: str, deadline: float) -> None:
    """Poll pg_locks until some backend waits for a lock (our blocked lookup)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cur = await conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return
            assert time.monotonic() < deadline, "the lookup never blocked"
            await asyncio.sleep(0.01)


def test_cancelled_lookup_returns_its_connection(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        key = generate_api_key()
        pool = await create_async_pool(clean_db, min_size=1, max_size=1)
        try:
            repo = AsyncPostgresTenantRepository(pool)
            tenant = await repo.create(Tenant(name="A", api_key_hash=hash_api_key(key)))
            # Hold a lock that makes the lookup wait inside the server.
            async with await psycopg.AsyncConnection.connect(clean_db) as locker:
                await locker.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
                lookup = asyncio.create_task(repo.get_by_api_key(key))
                await wait_for_lock_waiter(clean_db, time.monotonic() + 10)
                lookup.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await lookup
                await locker.rollback()
            # The pool's only connection came back usable: the next lookup works.
            assert (await repo.get_by_api_key(key)).id == tenant.id
            stats = pool.get_stats()
            assert stats.get("pool_size", 1) <= 1
            assert stats.get("requests_waiting", 0) == 0
        finally:
            await pool.close()

    runner.run(scenario())


def test_concurrent_lookups_share_a_small_pool(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        pool = await create_async_pool(clean_db, min_size=1, max_size=2)
        try:
            repo = AsyncPostgresTenantRepository(pool)
            keys = [generate_api_key() for _ in range(5)]
            created = [
                await repo.create(Tenant(name=f"t{i}", api_key_hash=hash_api_key(k)))
                for i, k in enumerate(keys)
            ]
            found = await asyncio.gather(*(repo.get_by_api_key(k) for k in keys * 20))
            assert [t.id for t in found] == [t.id for t in created] * 20
        finally:
            await pool.close()

    runner.run(scenario())
