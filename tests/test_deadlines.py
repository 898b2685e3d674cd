"""Every call has a bound, and unavailability says whether the database is out of reach.

Faults are real: a TCP proxy that freezes (a dead path: nothing arrives, nothing is
refused, the proxy's kernel keeps ACKing), refuses or cuts; a backend SIGSTOPped on
the test server (one backend of this test's own scratch database, always continued);
a one-connection pool held by another caller; a lock held by another session. Each
frozen or stopped call must return with `DatabaseUnreachable`, after which the
repository works again and its pool holds no broken connection. A busy database
(an exhausted pool, a statement timeout) is `StoreUnavailable` but not
`DatabaseUnreachable`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncBudgetGuard,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    BudgetExceeded,
    BudgetGuard,
    DatabaseUnreachable,
    InvalidInput,
    PostgresTenantRepository,
    PostgresUsageRepository,
    StoreUnavailable,
    Tenant,
    UsageRecord,
    create_async_pool,
    create_pool,
    generate_api_key,
    hash_api_key,
)
from tenantstore._acompat import AWatchdog, Watchdog
from tenantstore._pgerrors import PoolHealth
from tests.fix_backends import FakeClock
from tests.polling import DEADLINE, wait_until
from tests.tcpproxy import TcpProxy, tcp_proxy

# Small bounds keep each frozen call short; the assertions are about outcomes.
TIMEOUT = 0.5


def new_tenant() -> tuple[Tenant, str]:
    key = generate_api_key()
    return Tenant(name="Acme", api_key_hash=hash_api_key(key)), key


def new_record(tenant: Tenant, request_id: str) -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant.id, request_id=request_id, model="m", provider="p"
    )


@pytest.fixture
def proxy(clean_db: str) -> Iterator[TcpProxy]:
    with tcp_proxy(clean_db) as p:
        yield p


def proxied_pool(proxy: TcpProxy, url: str) -> ConnectionPool:
    return create_pool(
        proxy.url(url), min_size=1, max_size=1, timeout=TIMEOUT, connect_timeout=1
    )


async def proxied_apool(proxy: TcpProxy, url: str) -> AsyncConnectionPool:
    return await create_async_pool(
        proxy.url(url), min_size=1, max_size=1, timeout=TIMEOUT, connect_timeout=1
    )


def works(call: Callable[[], object]) -> bool:
    try:
        call()
    except StoreUnavailable:
        return False
    return True


def assert_pool_healthy(pool: ConnectionPool) -> None:
    """Every connection the pool holds answers (none is broken or stale)."""
    held = [pool.getconn(5) for _ in range(pool.get_stats()["pool_available"])]
    try:
        for conn in held:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in held:
            pool.putconn(conn)


async def assert_apool_healthy(pool: AsyncConnectionPool) -> None:
    held = [await pool.getconn(5) for _ in range(pool.get_stats()["pool_available"])]
    try:
        for conn in held:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
    finally:
        for conn in held:
            await pool.putconn(conn)


# -- item 6: a frozen path ------------------------------------------------------


def test_frozen_path_fails_each_call_and_heals(proxy: TcpProxy, clean_db: str) -> None:
    with proxied_pool(proxy, clean_db) as pool:
        tenants = PostgresTenantRepository(pool)
        usage = PostgresUsageRepository(pool)
        tenant, key = new_tenant()
        tenants.create(tenant)
        calls: dict[str, Callable[[], object]] = {
            "get_by_api_key": lambda: tenants.get_by_api_key(key),
            "record": lambda: usage.record(new_record(tenant, "frozen")),
            "create": lambda: tenants.create(new_tenant()[0]),
        }
        for name, call in calls.items():
            pool.wait(10)  # a connection is ready: the call reaches its statement
            proxy.freeze()
            try:
                with pytest.raises(DatabaseUnreachable, match="no answer") as info:
                    call()
                assert isinstance(info.value.__cause__, psycopg.OperationalError), name
            finally:
                proxy.passthrough()
            wait_until(
                lambda: works(lambda: tenants.get_by_id(tenant.id)),
                f"the repository works again after a frozen {name}",
            )
            assert_pool_healthy(pool)
        assert tenants.get_by_api_key(key).id == tenant.id
        assert usage.record(new_record(tenant, "after")) is True


def test_async_frozen_path_fails_each_call_and_heals(
    proxy: TcpProxy, clean_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        pool = await proxied_apool(proxy, clean_db)
        try:
            tenants = AsyncPostgresTenantRepository(pool)
            usage = AsyncPostgresUsageRepository(pool)
            tenant, key = new_tenant()
            await tenants.create(tenant)
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "get_by_api_key": lambda: tenants.get_by_api_key(key),
                "record": lambda: usage.record(new_record(tenant, "frozen")),
                "create": lambda: tenants.create(new_tenant()[0]),
            }
            for name, call in calls.items():
                await pool.wait(10)
                proxy.freeze()
                try:
                    with pytest.raises(DatabaseUnreachable, match="no answer") as info:
                        await call()
                    assert isinstance(info.value.__cause__, psycopg.OperationalError)
                finally:
                    proxy.passthrough()
                await async_until_works(lambda: tenants.get_by_id(tenant.id), name)
                await assert_apool_healthy(pool)
            assert (await tenants.get_by_api_key(key)).id == tenant.id
            assert await usage.record(new_record(tenant, "after")) is True
        finally:
            await pool.close()

    runner.run(scenario())


async def async_until_works(call: Callable[[], Awaitable[object]], name: str) -> None:
    """Poll `call` (with a deadline) until it no longer raises StoreUnavailable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        try:
            await call()
        except StoreUnavailable:
            if loop.time() > deadline:
                pytest.fail(f"timed out waiting until the repository works ({name})")
            await asyncio.sleep(0.001)
        else:
            return


def test_a_frozen_pool_wait_is_unreachable(proxy: TcpProxy, clean_db: str) -> None:
    # After the first call cut its dead connection, the pool tries to connect
    # through the frozen path: the next call's pool wait times out, and since
    # the pool is trying (and failing) to connect, that is unreachable too.
    with proxied_pool(proxy, clean_db) as pool:
        repo = PostgresTenantRepository(pool)
        tenant, _ = new_tenant()
        repo.create(tenant)
        proxy.freeze()
        try:
            with pytest.raises(DatabaseUnreachable, match="no answer"):
                repo.get_by_id(tenant.id)
            with pytest.raises(DatabaseUnreachable) as info:
                repo.get_by_id(tenant.id)
            assert isinstance(info.value.__cause__, psycopg_pool.PoolTimeout)
        finally:
            proxy.passthrough()
        wait_until(lambda: works(lambda: repo.get_by_id(tenant.id)), "healed")


# -- item 6: a hung backend --------------------------------------------------------


def backend_pid(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    pid: int = row[0]
    return pid


def require_signalable(pid: int) -> None:
    try:
        os.kill(pid, 0)  # no signal: only whether we may send one
    except PermissionError:
        pytest.skip("the server's processes belong to another user")


def test_stopped_backend_is_unreachable_then_replaced(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=1, timeout=TIMEOUT) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        tenants.create(tenant)
        pid = backend_pid(pool)
        require_signalable(pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(DatabaseUnreachable, match="no answer"):
                tenants.get_by_api_key(key)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: works(lambda: tenants.get_by_api_key(key)), "replaced")
        assert backend_pid(pool) != pid
        assert_pool_healthy(pool)


def test_async_stopped_backend_is_unreachable_then_replaced(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        pool = await create_async_pool(clean_db, min_size=1, max_size=1, timeout=0.5)
        try:
            usage = AsyncPostgresUsageRepository(pool)
            tenant, _ = new_tenant()
            await AsyncPostgresTenantRepository(pool).create(tenant)
            async with pool.connection() as conn:
                row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            assert row is not None
            require_signalable(row[0])
            os.kill(row[0], signal.SIGSTOP)
            try:
                with pytest.raises(DatabaseUnreachable, match="no answer"):
                    await usage.record(new_record(tenant, "stopped"))
            finally:
                os.kill(row[0], signal.SIGCONT)
            await async_until_works(
                lambda: usage.record(new_record(tenant, "after")), "replaced"
            )
            await assert_apool_healthy(pool)
        finally:
            await pool.close()

    runner.run(scenario())


# -- classification: busy is not unreachable --------------------------------------


def test_exhausted_pool_is_busy_not_unreachable(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=1, timeout=0.2) as pool:
        repo = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        repo.create(tenant)
        with pool.connection(), pytest.raises(StoreUnavailable) as info:
            repo.get_by_api_key(key)
        assert not isinstance(info.value, DatabaseUnreachable)
        assert isinstance(info.value.__cause__, psycopg_pool.PoolTimeout)
        assert repo.get_by_api_key(key).id == tenant.id


def test_async_exhausted_pool_is_busy_not_unreachable(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        pool = await create_async_pool(clean_db, min_size=1, max_size=1, timeout=0.2)
        try:
            repo = AsyncPostgresTenantRepository(pool)
            tenant, key = new_tenant()
            await repo.create(tenant)
            async with pool.connection():
                with pytest.raises(StoreUnavailable) as info:
                    await repo.get_by_api_key(key)
            assert not isinstance(info.value, DatabaseUnreachable)
            assert (await repo.get_by_api_key(key)).id == tenant.id
        finally:
            await pool.close()

    runner.run(scenario())


def test_statement_timeout_is_busy_and_keeps_the_connection(clean_db: str) -> None:
    # A lock held elsewhere makes the lookup slow, not dead: the server cancels
    # it at the pool's statement_timeout, well before the client-side deadline
    # would cut the connection as a dead path.
    with create_pool(clean_db, min_size=1, max_size=1, timeout=TIMEOUT) as pool:
        repo = PostgresTenantRepository(pool)
        tenant, _ = new_tenant()
        repo.create(tenant)
        pid = backend_pid(pool)
        with psycopg.connect(clean_db) as locker:
            locker.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable) as info:
                repo.get_by_id(tenant.id)
            locker.rollback()
        assert not isinstance(info.value, DatabaseUnreachable)
        assert isinstance(info.value.__cause__, psycopg.errors.QueryCanceled)
        assert backend_pid(pool) == pid  # the same, healthy connection
        assert repo.get_by_id(tenant.id).id == tenant.id


# -- classification: out of reach ---------------------------------------------------


def test_refused_and_cut_path_is_unreachable(proxy: TcpProxy, clean_db: str) -> None:
    with proxied_pool(proxy, clean_db) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        tenants.create(tenant)
        pool.wait(10)
        proxy.refuse()
        proxy.cut()
        try:
            # A write on the cut connection: lost, not retried.
            with pytest.raises(DatabaseUnreachable):
                tenants.create(new_tenant()[0])
            # A read: the pool cannot connect, so its wait times out unreachable.
            with pytest.raises(DatabaseUnreachable) as info:
                tenants.get_by_api_key(key)
            assert isinstance(info.value.__cause__, psycopg_pool.PoolTimeout)
        finally:
            proxy.passthrough()
        wait_until(lambda: works(lambda: tenants.get_by_api_key(key)), "healed")
        assert_pool_healthy(pool)


def test_async_refused_path_is_unreachable(
    proxy: TcpProxy, clean_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        pool = await proxied_apool(proxy, clean_db)
        try:
            repo = AsyncPostgresTenantRepository(pool)
            tenant, key = new_tenant()
            await repo.create(tenant)
            await pool.wait(10)
            proxy.refuse()
            proxy.cut()
            try:
                with pytest.raises(DatabaseUnreachable):
                    await repo.get_by_api_key(key)
            finally:
                proxy.passthrough()
            await async_until_works(lambda: repo.get_by_api_key(key), "healed")
        finally:
            await pool.close()

    runner.run(scenario())


def test_foreign_pool_timeout_after_connection_errors_is_unreachable(
    proxy: TcpProxy, clean_db: str
) -> None:
    # A pool not made by create_pool: its connection-error counter is the evidence.
    proxy.refuse()
    pool = ConnectionPool(
        proxy.url(clean_db),
        min_size=1,
        max_size=1,
        timeout=TIMEOUT,
        kwargs={"autocommit": True, "connect_timeout": 1},
        open=False,
    )
    repo = PostgresTenantRepository(pool)
    pool.open()
    try:
        wait_until(
            lambda: pool.get_stats().get("connections_errors", 0) > 0,
            "the pool failed to connect",
        )
        with pytest.raises(DatabaseUnreachable):
            repo.list()
    finally:
        pool.close()


# -- the timeout itself ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "5", True])
def test_timeout_must_be_positive_seconds(pool: ConnectionPool, bad: Any) -> None:
    with pytest.raises(InvalidInput, match="timeout"):
        PostgresTenantRepository(pool, timeout=bad)
    with pytest.raises(InvalidInput, match="timeout"):
        PostgresUsageRepository(pool, timeout=bad)


def test_repositories_take_their_pools_timeout(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=1, timeout=2.5) as pool:
        assert PostgresTenantRepository(pool).timeout == 2.5
        assert PostgresUsageRepository(pool, timeout=1).timeout == 1.0


def test_pool_sets_statement_timeout(clean_db: str) -> None:
    with (
        create_pool(clean_db, min_size=1, max_size=1, timeout=2.5) as pool,
        pool.connection() as conn,
    ):
        assert conn.execute("SHOW statement_timeout").fetchone() == ("2500ms",)
        assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)


# -- the watchdogs themselves --------------------------------------------------------


def test_watchdog_shuts_a_hung_call_down_and_spares_a_disarmed_one(
    clean_db: str,
) -> None:
    watchdog = Watchdog()
    with (
        psycopg.connect(clean_db, autocommit=True) as spared,
        psycopg.connect(clean_db, autocommit=True) as hung,
    ):
        token = watchdog.arm(spared, 0.05)
        assert spared.execute("SELECT 1").fetchone() == (1,)
        assert watchdog.disarm(token) is False
        token = watchdog.arm(hung, 0.05)
        with pytest.raises(psycopg.OperationalError):
            hung.execute("SELECT pg_sleep(5)")
        assert watchdog.disarm(token) is True
        assert hung.broken
        # The thread has run past the first deadline: the disarmed one is intact.
        assert spared.execute("SELECT 2").fetchone() == (2,)


def test_async_watchdog_shuts_a_hung_call_down(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        watchdog = AWatchdog()
        spared = await psycopg.AsyncConnection.connect(clean_db, autocommit=True)
        hung = await psycopg.AsyncConnection.connect(clean_db, autocommit=True)
        async with spared, hung:
            token = watchdog.arm(spared, 0.05)
            await spared.execute("SELECT 1")
            assert watchdog.disarm(token) is False
            token = watchdog.arm(hung, 0.05)
            with pytest.raises(psycopg.OperationalError):
                await hung.execute("SELECT pg_sleep(5)")
            assert watchdog.disarm(token) is True
            cur = await spared.execute("SELECT 2")
            assert await cur.fetchone() == (2,)

    runner.run(scenario())


def test_async_caller_cancelled_on_a_frozen_path_returns(
    proxy: TcpProxy, clean_db: str, runner: asyncio.Runner
) -> None:
    # The caller gives up first (wait_for): psycopg then sends a cancel request,
    # which takes the same frozen path; the call's own deadline still ends its
    # wait on the connection, and that connection never returns to the pool.
    async def scenario() -> None:
        pool = await proxied_apool(proxy, clean_db)
        try:
            repo = AsyncPostgresTenantRepository(pool)
            tenant, key = new_tenant()
            await repo.create(tenant)
            await pool.wait(10)
            proxy.freeze()
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(repo.get_by_api_key(key), 0.1)
            finally:
                proxy.passthrough()
            await async_until_works(lambda: repo.get_by_api_key(key), "healed")
            await assert_apool_healthy(pool)
        finally:
            await pool.close()

    runner.run(scenario())


def test_pool_connections_have_keepalives_unless_the_conninfo_says(
    clean_db: str,
) -> None:
    with (
        create_pool(clean_db, min_size=1, max_size=1) as pool,
        pool.connection() as conn,
    ):
        assert conn.info.get_parameters().get("keepalives_idle") == "5"
    url = psycopg.conninfo.make_conninfo(clean_db, keepalives_idle="42")
    with (
        create_pool(url, min_size=1, max_size=1) as pool,
        pool.connection() as conn,
    ):
        assert conn.info.get_parameters().get("keepalives_idle") == "42"


def test_pool_health_rule() -> None:
    # The bookkeeping behind the rule, step by step (the pool's hooks call these).
    health = PoolHealth()
    health.attempting()
    health.connected()
    assert not health.unreachable(time.monotonic())  # not trying: busy
    wait_began = time.monotonic()
    health.attempting()  # a replacement, started during the wait
    assert not health.unreachable(wait_began)  # still under way, not failed: busy
    health.setup_failed()
    assert health.unreachable(wait_began)  # it failed: unreachable
    health.connected()
    assert not health.unreachable(time.monotonic())
    health.attempting()
    # Pending since before the wait began (connecting hangs): unreachable.
    assert health.unreachable(time.monotonic() + 1)


# -- the budget guard: every statement under the same bound ---------------------


def budget_tenant(tenants: Any, budget: str) -> Any:
    return tenants.create(
        Tenant(
            name="Acme",
            api_key_hash=hash_api_key(generate_api_key()),
            budget_usd=Decimal(budget),
        )
    )


def cost_record(tenant: Tenant, request_id: str, cost: str) -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant.id,
        request_id=request_id,
        model="m",
        provider="p",
        cost_usd=Decimal(cost),
    )


def test_the_budget_guard_is_bounded_on_a_frozen_path_and_heals(
    proxy: TcpProxy, clean_db: str
) -> None:
    clock = FakeClock(datetime.now(UTC))
    with proxied_pool(proxy, clean_db) as pool:
        tenants = PostgresTenantRepository(pool, clock=clock)
        usage = PostgresUsageRepository(pool, clock=clock)
        tenant = budget_tenant(tenants, "1.00")
        options: dict[str, Any] = {
            "clock": clock,
            "lease_time": 20.0,
            "renew_interval": None,
            "reclaim_wait": 0,
        }
        with BudgetGuard(tenants, usage, **options) as guard:
            settling = guard.reserve(tenant, Decimal("0.10"))
            releasing = guard.reserve(tenant, Decimal("0.10"))
            with BudgetGuard(tenants, usage, **options) as other:
                # The other guard takes what is left and is refused: it asks this
                # one to go lean, so that its settles and releases (not only its
                # lease steps) are statements on the lease row.
                refused = 0
                for _ in range(20):
                    try:
                        other.reserve(tenant, Decimal("0.10"))
                    except BudgetExceeded:
                        refused += 1
                assert refused > 0
                guard.renew()
                assert guard._leases[tenant.id].lean
                calls: dict[str, Callable[[], object]] = {
                    "reserve": lambda: guard.reserve(tenant, Decimal("0.01")),
                    "settle": lambda: settling.settle(cost_record(tenant, "s", "0.1")),
                    "status": lambda: guard.status(tenant),
                }
                for name, call in calls.items():
                    pool.wait(10)
                    proxy.freeze()
                    try:
                        with pytest.raises(DatabaseUnreachable) as info:
                            call()
                        assert isinstance(
                            info.value.__cause__, psycopg.OperationalError
                        ), name
                    finally:
                        proxy.passthrough()
                    wait_until(
                        lambda: works(lambda: guard.status(tenant)),
                        f"the guard works again after a frozen {name}",
                    )
                    assert_pool_healthy(pool)
                # A release cannot fail: on a frozen path it returns within the
                # bound, and the share stays leased until a renewal.
                pool.wait(10)
                proxy.freeze()
                try:
                    releasing.release()
                finally:
                    proxy.passthrough()
                wait_until(
                    lambda: works(lambda: guard.status(tenant)),
                    "the guard works again after a frozen release",
                )
                # The settle that failed left its reservation open: it goes through.
                assert settling.settle(cost_record(tenant, "s", "0.1")) is True
                # A cut connection: the read is retried on a fresh one.
                proxy.cut()
                status = guard.status(tenant)
                assert status.spent_usd == Decimal("0.10")
                assert status.spent_usd + status.held_usd <= status.budget_usd
            # The other guard's share is back: a later reservation is granted.
            wait_until(
                lambda: works(lambda: guard.reserve(tenant, Decimal("0.10")).release()),
                "a reservation is granted again",
            )
            status = guard.status(tenant)
            assert (status.spent_usd, status.held_usd) == (Decimal("0.10"), Decimal(0))


def test_the_async_budget_guard_is_bounded_on_a_frozen_path_and_heals(
    proxy: TcpProxy, clean_db: str, runner: asyncio.Runner
) -> None:
    clock = FakeClock(datetime.now(UTC))

    async def scenario() -> None:
        pool = await proxied_apool(proxy, clean_db)
        try:
            tenants = AsyncPostgresTenantRepository(pool, clock=clock)
            usage = AsyncPostgresUsageRepository(pool, clock=clock)
            tenant = await budget_tenant(tenants, "1.00")
            async with AsyncBudgetGuard(
                tenants, usage, clock=clock, lease_time=20.0, renew_interval=None
            ) as guard:
                settling = await guard.reserve(tenant, Decimal("0.10"))
                clock.advance(16.0)  # past the share's safe time: reserve steps
                calls: dict[str, Callable[[], Awaitable[object]]] = {
                    "reserve": lambda: guard.reserve(tenant, Decimal("0.01")),
                    "status": lambda: guard.status(tenant),
                }
                for name, call in calls.items():
                    await pool.wait(10)
                    proxy.freeze()
                    try:
                        with pytest.raises(DatabaseUnreachable) as info:
                            await call()
                        assert isinstance(
                            info.value.__cause__, psycopg.OperationalError
                        ), name
                    finally:
                        proxy.passthrough()
                    await async_until_works(lambda: guard.status(tenant), name)
                    await assert_apool_healthy(pool)
                proxy.cut()
                assert await settling.settle(cost_record(tenant, "s", "0.1")) is True
                await async_until_works(
                    lambda: guard.reserve(tenant, Decimal("0.10")), "reserve"
                )
                status = await guard.status(tenant)
                assert status.spent_usd == Decimal("0.10")
                assert status.spent_usd + status.held_usd <= status.budget_usd
        finally:
            await pool.close()

    runner.run(scenario())
