"""Cross-process invalidation against a real PostgreSQL.

Each "process" is an independent stack: its own pool, repository, cache and
listener, sharing nothing but the database, exactly as two gateway processes would.
Changes are made by raw SQL on a third connection (so the trigger, not this
library, reports them), by one stack's cache, and while a listener is cut off.
Waits poll with a deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncPostgresTenantRepository,
    AsyncTenantCacheListener,
    CachedTenantRepository,
    InMemoryTenantRepository,
    PostgresTenantRepository,
    StoreUnavailable,
    Tenant,
    TenantCacheListener,
    TenantNotFound,
    create_pool,
    generate_api_key,
    hash_api_key,
)
from tests.fix_backends import FakeClock
from tests.polling import DEADLINE, async_wait_until, wait_until


def sql_exec(url: str, statement: str, *params: Any) -> None:
    """Run one statement on a connection of its own: the "third process"."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def set_enabled(url: str, tenant_id: str, enabled: bool) -> None:
    sql_exec(url, "UPDATE tenants SET enabled = %s WHERE id = %s", enabled, tenant_id)


def refused(cache: CachedTenantRepository, key: str) -> Callable[[], bool]:
    return lambda: found(cache, key) is None


def accepted(cache: CachedTenantRepository, key: str) -> Callable[[], bool]:
    return lambda: found(cache, key) is not None


def found(cache: CachedTenantRepository, key: str) -> Tenant | None:
    try:
        return cache.get_by_api_key(key)
    except TenantNotFound:
        return None


@dataclasses.dataclass
class Stack:
    """One gateway process: pool, repository, cache, listener."""

    pool: ConnectionPool
    repo: PostgresTenantRepository
    cache: CachedTenantRepository
    listener: TenantCacheListener


@contextlib.contextmanager
def stack(
    url: str, listener_url: str | None = None, **cache_settings: Any
) -> Iterator[Stack]:
    with create_pool(url, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        cache = CachedTenantRepository(repo, ttl=300, **cache_settings)
        with TenantCacheListener(
            listener_url or url, cache, reconnect_backoff=(0.01, 0.1)
        ) as listener:
            assert listener.wait_connected(DEADLINE)
            yield Stack(pool, repo, cache, listener)


def new_tenant(repo: PostgresTenantRepository, key: str, **fields: Any) -> Tenant:
    return repo.create(Tenant(name="acme", api_key_hash=hash_api_key(key), **fields))


def warm(cache: CachedTenantRepository, key: str) -> Tenant:
    """Look `key` up until it is served from memory."""
    before = cache.stats().hits
    # Until the notification of the change that made it valid has passed, the key
    # may still be refused (a negative entry) or its fill discarded.
    wait_until(
        lambda: found(cache, key) is not None and cache.stats().hits > before,
        "the key is served from memory",
    )
    return cache.get_by_api_key(key)


def test_a_disable_by_sql_reaches_every_process(clean_db: str) -> None:
    key = generate_api_key()
    with stack(clean_db) as one, stack(clean_db) as two:
        created = new_tenant(one.repo, key)
        for process in (one, two):
            warm(process.cache, key)
        set_enabled(clean_db, created.id, False)
        for process in (one, two):
            wait_until(refused(process.cache, key), "refused")
        # And back: re-enabling is a change like any other.
        set_enabled(clean_db, created.id, True)
        for process in (one, two):
            wait_until(accepted(process.cache, key), "accepted")


def test_writes_through_one_cache_reach_the_other(clean_db: str) -> None:
    old_key, new_key = generate_api_key(), generate_api_key()
    with stack(clean_db) as one, stack(clean_db) as two:
        created = new_tenant(one.repo, old_key)
        warm(two.cache, old_key)
        with pytest.raises(TenantNotFound):
            two.cache.get_by_api_key(new_key)  # now a negative entry in two
        one.cache.update(
            dataclasses.replace(created, api_key_hash=hash_api_key(new_key))
        )
        with pytest.raises(TenantNotFound):
            one.cache.get_by_api_key(old_key)  # same process: at once
        wait_until(lambda: found(two.cache, old_key) is None, "old key refused")
        wait_until(lambda: found(two.cache, new_key) is not None, "new key accepted")
        one.cache.delete(created.id)
        wait_until(lambda: found(two.cache, new_key) is None, "deleted")


def test_truncate_expires_everything(clean_db: str) -> None:
    key = generate_api_key()
    with stack(clean_db) as one:
        new_tenant(one.repo, key)
        warm(one.cache, key)
        sql_exec(clean_db, "TRUNCATE tenants CASCADE")
        wait_until(lambda: found(one.cache, key) is None, "truncated away")


@pytest.fixture
def listener_role(clean_db: str) -> Iterator[tuple[str, str]]:
    """A login role of its own for a listener, so a test can lock it out."""
    name = f"ts_listener_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    try:
        sql_exec(
            clean_db,
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            .format(sql.Identifier(name), sql.Literal(password))
            .as_string(),
        )
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test server does not let us create roles")
    params = conninfo_to_dict(clean_db)
    params.update(user=name, password=password)
    try:
        yield name, make_conninfo("", **params)
    finally:
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_listener_cut_off_serves_nothing_old_and_recovers(
    clean_db: str, listener_role: tuple[str, str]
) -> None:
    role, listener_url = listener_role
    key_a, key_b = generate_api_key(), generate_api_key()
    with stack(clean_db, listener_url) as one:
        a = new_tenant(one.repo, key_a)
        b = new_tenant(one.repo, key_b, rate_limit_rpm=1)
        warm(one.cache, key_a)
        warm(one.cache, key_b)
        # Cut the listener off and keep it off while tenants change.
        alter = "ALTER ROLE {} {}"
        nologin = sql.SQL(alter).format(sql.Identifier(role), sql.SQL("NOLOGIN"))
        sql_exec(clean_db, nologin.as_string())
        assert one.listener.backend_pid is not None
        sql_exec(clean_db, "SELECT pg_terminate_backend(%s)", one.listener.backend_pid)
        wait_until(lambda: not one.listener.connected, "the drop is detected")
        set_enabled(clean_db, a.id, False)
        sql_exec(clean_db, "UPDATE tenants SET rate_limit_rpm = 2 WHERE id = %s", b.id)
        # No notification came, yet nothing old is served: every lookup asks.
        fills = one.cache.stats().fills
        assert found(one.cache, key_a) is None
        for _ in range(3):
            assert one.cache.get_by_api_key(key_b).rate_limit_rpm == 2
        assert one.cache.stats().fills == fills + 4
        assert not one.listener.connected
        # Let it back in: it reconnects, and later changes still invalidate.
        login = sql.SQL(alter).format(sql.Identifier(role), sql.SQL("LOGIN"))
        sql_exec(clean_db, login.as_string())
        wait_until(lambda: one.listener.reconnects == 1, "the listener reconnects")
        assert one.listener.wait_connected(DEADLINE)
        warm(one.cache, key_b)
        sql_exec(clean_db, "UPDATE tenants SET rate_limit_rpm = 3 WHERE id = %s", b.id)
        wait_until(
            lambda: one.cache.get_by_api_key(key_b).rate_limit_rpm == 3, "updated"
        )


def test_a_killed_listener_reconnects_and_keeps_invalidating(clean_db: str) -> None:
    key = generate_api_key()
    with stack(clean_db) as one, stack(clean_db) as two:
        created = new_tenant(one.repo, key)
        warm(one.cache, key)
        warm(two.cache, key)
        pid = one.listener.backend_pid
        sql_exec(clean_db, "SELECT pg_terminate_backend(%s)", pid)
        set_enabled(clean_db, created.id, False)
        for process in (one, two):
            wait_until(refused(process.cache, key), "refused")
        wait_until(lambda: one.listener.backend_pid not in (None, pid), "reconnected")
        assert one.listener.reconnects == 1
        set_enabled(clean_db, created.id, True)
        warm(one.cache, key)
        set_enabled(clean_db, created.id, False)
        wait_until(lambda: found(one.cache, key) is None, "not found again")


def test_a_listener_that_cannot_connect_keeps_its_cache_honest(clean_db: str) -> None:
    key = generate_api_key()
    with create_pool(clean_db, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        new_tenant(repo, key)
        cache = CachedTenantRepository(repo)
        nowhere = "host=127.0.0.1 port=1 connect_timeout=1"
        with TenantCacheListener(nowhere, cache, reconnect_backoff=(0.01, 0.02)) as lst:
            assert not lst.wait_connected(0.05)
            for expected in (1, 2, 3):
                cache.get_by_api_key(key)
                assert cache.stats().fills == expected
        # Closed: back to a plain TTL cache.
        cache.get_by_api_key(key)
        cache.get_by_api_key(key)
        assert cache.stats().fills == 4


def test_stale_if_error_against_a_closed_pool(clean_db: str) -> None:
    clock = FakeClock()
    key = generate_api_key()
    pool = create_pool(clean_db, min_size=1, max_size=2)
    repo = PostgresTenantRepository(pool)
    created = new_tenant(repo, key)
    cache = CachedTenantRepository(repo, ttl=10, stale_if_error=5, clock=clock)
    cache.get_by_api_key(key)
    pool.close()  # from now on every query raises StoreUnavailable
    with pytest.raises(StoreUnavailable):
        repo.get_by_id(created.id)
    clock.advance(10)
    assert cache.get_by_api_key(key).id == created.id
    clock.advance(4.999)
    assert cache.get_by_api_key(key).id == created.id
    assert cache.stats().stale_serves == 2
    clock.advance(0.001)
    with pytest.raises(StoreUnavailable):
        cache.get_by_api_key(key)


def test_listener_lifecycle(clean_db: str) -> None:
    cache = CachedTenantRepository(InMemoryTenantRepository())
    listener = TenantCacheListener(clean_db, [cache])
    listener.close()  # never started: nothing to do
    with pytest.raises(RuntimeError):
        listener.start()
    with pytest.raises(ValueError, match="reconnect_backoff"):
        TenantCacheListener(clean_db, cache, reconnect_backoff=(0, 1))
    with TenantCacheListener(clean_db, cache) as running:
        assert running.wait_connected(DEADLINE)
        assert running.backend_pid is not None
    assert not running.connected
    running.close()  # twice is fine


# -- asyncio -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def async_stack(
    pool: AsyncConnectionPool, url: str
) -> AsyncIterator[tuple[AsyncCachedTenantRepository, AsyncTenantCacheListener]]:
    cache = AsyncCachedTenantRepository(AsyncPostgresTenantRepository(pool), ttl=300)
    async with AsyncTenantCacheListener(
        url, cache, reconnect_backoff=(0.01, 0.1)
    ) as listener:
        assert await listener.wait_connected(DEADLINE)
        yield cache, listener


async def async_found(cache: AsyncCachedTenantRepository, key: str) -> bool:
    try:
        await cache.get_by_api_key(key)
    except TenantNotFound:
        return False
    return True


def test_async_listener_across_processes(
    clean_db: str, apool: AsyncConnectionPool, runner: asyncio.Runner
) -> None:
    key = generate_api_key()

    async def test() -> None:
        async with async_stack(apool, clean_db) as (cache, listener):
            created = await cache.inner.create(
                Tenant(name="acme", api_key_hash=hash_api_key(key))
            )
            # Served from memory once the INSERT's own notification has passed.
            deadline = time.monotonic() + DEADLINE
            while cache.stats().hits == 0 and time.monotonic() < deadline:
                await cache.get_by_api_key(key)
                await asyncio.sleep(0.001)
            assert cache.stats().hits > 0
            # Another process disables it.
            set_enabled(clean_db, created.id, False)
            gone = False
            deadline = time.monotonic() + DEADLINE
            while not gone and time.monotonic() < deadline:
                gone = not await async_found(cache, key)
                await asyncio.sleep(0.001)
            assert gone
            # Its connection is killed: it reconnects and keeps invalidating.
            pid = listener.backend_pid
            sql_exec(clean_db, "SELECT pg_terminate_backend(%s)", pid)
            await async_wait_until(
                lambda: listener.backend_pid not in (None, pid), "reconnected"
            )
            assert listener.reconnects == 1
            set_enabled(clean_db, created.id, True)
            back = False
            deadline = time.monotonic() + DEADLINE
            while not back and time.monotonic() < deadline:
                back = await async_found(cache, key)
                await asyncio.sleep(0.001)
            assert back
        assert not listener.connected

    runner.run(test())
