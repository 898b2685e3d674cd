"""`Store` and `AsyncStore`: opened, used end to end, checked and closed together.

On a real PostgreSQL: both ways of opening each twin, the parts working together
(authenticate through the cache, reserve and settle a budget, submit through the
writer), the close order (what was submitted before close is stored, leases go
back), health with the server reachable and cut off (a TCP proxy refusing and
resetting connections), and a failed open that leaves no connection behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncBudgetGuard,
    AsyncCachedTenantRepository,
    AsyncInMemoryTenantRepository,
    AsyncPostgresTenantRepository,
    AsyncStore,
    AsyncTenantCacheListener,
    AsyncUsageWriter,
    BudgetExceeded,
    BudgetGuard,
    CachedTenantRepository,
    DatabaseUnreachable,
    InMemoryTenantRepository,
    InvalidInput,
    PartHealth,
    PostgresTenantRepository,
    Store,
    StoreHealth,
    StoreUnavailable,
    Tenant,
    TenantCacheListener,
    TenantNotFound,
    TenantStoreError,
    UsageRecord,
    UsageWriter,
    generate_api_key,
    hash_api_key,
)
from tests.polling import DEADLINE, async_wait_until, wait_until
from tests.tcpproxy import TcpProxy, tcp_proxy

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Small pools and a short bound: a failed open gives up within seconds.
SMALL: dict[str, Any] = {"min_size": 1, "max_size": 4, "timeout": 3.0}


def record(tenant_id: str, request_id: str, cost: str = "0.25") -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant_id,
        request_id=request_id,
        model="gpt-4o",
        provider="openai",
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal(cost),
    )


def new_tenant(budget: str = "1.00") -> tuple[Tenant, str]:
    key = generate_api_key()
    tenant = Tenant(
        name="Acme", api_key_hash=hash_api_key(key), budget_usd=Decimal(budget)
    )
    return tenant, key


def rows(url: str, query: str, *params: Any) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def usage_rows(url: str, tenant_id: str) -> int:
    return rows(
        url, "SELECT count(*) FROM usage_records WHERE tenant_id = %s", tenant_id
    )


def lease_rows(url: str, tenant_id: str) -> int:
    return rows(
        url, "SELECT count(*) FROM budget_leases WHERE tenant_id = %s", tenant_id
    )


def sessions(url: str, application_name: str) -> int:
    return rows(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        application_name,
    )


def named(url: str) -> tuple[str, str]:
    """`url` with an application_name of its own, to count its sessions by."""
    name = f"store-test-{uuid.uuid4().hex[:12]}"
    return make_conninfo(url, application_name=name), name


@pytest.fixture
def proxy(clean_db: str) -> Iterator[TcpProxy]:
    with tcp_proxy(clean_db) as p:
        yield p


def worker_threads() -> set[str]:
    return {
        t.name
        for t in threading.enumerate()
        if t.name.startswith("tenantstore-listener")
        or t.name.startswith("tenantstore-usage")
    }


# -- sync ----------------------------------------------------------------------


def test_sync_store_parts_work_end_to_end(clean_db: str) -> None:
    with Store.open(clean_db, **SMALL) as store:
        assert isinstance(store.tenants, CachedTenantRepository)
        assert isinstance(store.listener, TenantCacheListener)
        assert store.listener.connected
        assert isinstance(store.pool, ConnectionPool)
        assert isinstance(store.writer, UsageWriter)
        assert isinstance(store.budgets, BudgetGuard)

        tenant, key = new_tenant("1.00")
        created = store.tenants.create(tenant)
        listener = store.listener
        # The create's own notification invalidates what is cached: let it land.
        wait_until(lambda: listener.notifications >= 1, "the create is notified")
        assert store.tenants.get_by_api_key(key) == created
        assert store.tenants.get_by_api_key(key) == created  # from the cache
        assert isinstance(store.tenants, CachedTenantRepository)
        assert store.tenants.stats().hits >= 1

        reservation = store.budgets.reserve(created, Decimal("0.50"))
        assert reservation.settle(record(created.id, "settled", "0.40"))
        with pytest.raises(BudgetExceeded):
            store.budgets.reserve(created, Decimal("0.70"))

        store.writer.submit(record(created.id, "submitted", "0.10"))
        store.writer.flush(DEADLINE)
        summary = store.usage.get_tenant_usage_summary(created.id, date(2000, 1, 1))
        assert [(s.records, s.cost_usd) for s in summary] == [(2, Decimal("0.50"))]

        user = store.admins.create("ops", "correct horse", "admin")
        assert store.admins.authenticate("ops", "correct horse") == user
        assert store.health().ok


def test_sync_open_returns_the_store_and_close_is_idempotent(clean_db: str) -> None:
    store = Store.open(clean_db, **SMALL)
    assert "open" in repr(store)
    created = store.tenants.create(new_tenant()[0])
    assert store.writer is not None
    store.close()
    store.close()  # nothing left to do
    assert "closed" in repr(store)
    assert store.pool is not None
    assert store.pool.closed
    assert store.listener is not None
    assert not store.listener.connected
    with pytest.raises(TenantStoreError):
        store.writer.submit(record(created.id, "late"))
    health = store.health()  # never raises
    assert not health.ok
    assert not health.database.ok


def test_sync_close_writes_what_was_submitted_and_returns_leases(
    clean_db: str,
) -> None:
    # A writer that would wait 60 s for a batch: only close writes these.
    store = Store.open(clean_db, writer={"max_delay": 60.0}, **SMALL)
    assert store.writer is not None
    assert store.budgets is not None
    created = store.tenants.create(new_tenant("5.00")[0])
    held = store.budgets.reserve(created, Decimal("0.01"))
    held.settle(record(created.id, "reserved"))
    assert lease_rows(clean_db, created.id) == 1
    for i in range(50):
        store.writer.submit(record(created.id, f"r{i}"))
    # The store's guard settles through its writer: the settle's record is queued
    # too, and its hold stays until it commits.
    assert usage_rows(clean_db, created.id) == 0
    assert store.budgets.status(created).held_usd == Decimal("0.01")
    store.close()
    assert usage_rows(clean_db, created.id) == 51
    assert lease_rows(clean_db, created.id) == 0


def test_a_failing_close_step_does_not_skip_the_later_ones(
    clean_db: str, proxy: TcpProxy
) -> None:
    # The writer cannot write (the server is cut off), so its close times out
    # with a record pending; the guard, the listener and the pool close anyway.
    store = Store.open(proxy.url(clean_db), **SMALL)
    assert store.writer is not None
    assert store.budgets is not None
    created = store.tenants.create(new_tenant("5.00")[0])
    proxy.refuse()
    proxy.cut()
    store.writer.submit(record(created.id, "stranded"))
    with pytest.raises(StoreUnavailable, match="not written"):
        store.close(timeout=0.5)
    assert store.pool is not None
    assert store.pool.closed
    assert store.listener is not None
    assert not store.listener.connected
    with pytest.raises(InvalidInput, match="closed"):
        store.budgets.reserve(created, Decimal("0.01"))
    store.close()  # closed already: nothing raised again


def test_sync_parts_can_be_left_out_or_configured(clean_db: str) -> None:
    with Store.open(
        clean_db, cache=False, writer=False, budgets=False, **SMALL
    ) as bare:
        assert isinstance(bare.tenants, PostgresTenantRepository)
        assert bare.listener is None  # nothing to keep in step without a cache
        assert (bare.writer, bare.budgets) == (None, None)
        health = bare.health()
        assert health.ok
        assert (health.listener, health.writer) == (None, None)
        assert health.pool is not None
    with Store.open(
        clean_db,
        cache={"maxsize": 1},
        writer={"max_batch": 5, "max_pending": 7},
        **SMALL,
    ) as tuned:
        assert isinstance(tuned.tenants, CachedTenantRepository)
        keys = []
        for _ in range(3):
            tenant, key = new_tenant()
            tuned.tenants.create(tenant)
            keys.append(key)
        for key in keys:
            tuned.tenants.get_by_api_key(key)
        assert tuned.tenants.stats().size == 1
        writer = tuned.health().writer
        assert writer is not None
        assert "at most 7" in writer.detail


def test_bad_options_are_invalid_input_and_open_nothing(clean_db: str) -> None:
    url, name = named(clean_db)
    with pytest.raises(InvalidInput, match="writer"):
        Store.open(url, writer="yes", **SMALL)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="listener"):
        Store.open(url, cache=False, listener={"heartbeat": (1.0, 2.0)}, **SMALL)
    with pytest.raises(InvalidInput, match="url") as caught:
        Store.open("postgresql://u:s3cret@[oops", **SMALL)
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None
    # An option the part does not take: the part's own TypeError, pool closed.
    with pytest.raises(TypeError):
        Store.open(url, budgets={"no_such_option": 1}, **SMALL)
    wait_until(lambda: sessions(clean_db, name) == 0, "no session is left open")


def test_sync_failed_open_leaks_no_connection(clean_db: str, proxy: TcpProxy) -> None:
    # The pool reaches the database; the listener's direct path is refused.
    url, name = named(clean_db)
    proxy.refuse()
    before = worker_threads()
    with pytest.raises(DatabaseUnreachable, match="listener"):
        Store.open(url, listen_url=proxy.url(url), **SMALL)
    wait_until(lambda: sessions(clean_db, name) == 0, "the pool's sessions end")
    assert proxy.connections() == 0
    assert worker_threads() <= before
    # The database itself out of reach: refused before the pool made anything.
    with pytest.raises(DatabaseUnreachable, match="did not answer"):
        Store.open(proxy.url(url), **SMALL)
    assert proxy.connections() == 0
    assert worker_threads() <= before


def test_sync_health_reports_an_unreachable_server(
    clean_db: str, proxy: TcpProxy
) -> None:
    url = proxy.url(clean_db)
    with Store.open(url, writer={"max_delay": 0.01}, **SMALL) as store:
        assert store.writer is not None
        created = store.tenants.create(new_tenant()[0])
        health = store.health()
        assert health.ok, health

        proxy.refuse()
        proxy.cut()
        store.writer.submit(record(created.id, "during-outage"))
        wait_until(
            lambda: not store.health().writer.ok,  # type: ignore[union-attr]
            "the writer reports its failing writes",
        )
        health = store.health()
        assert not health.ok
        assert not health.database.ok
        assert "DatabaseUnreachable" in health.database.detail
        wait_until(
            lambda: not store.health().listener.ok,  # type: ignore[union-attr]
            "the listener reports it is not listening",
        )

        proxy.passthrough()
        wait_until(lambda: store.health().ok, "every part is healthy again")
        store.writer.flush(DEADLINE)
    assert usage_rows(clean_db, created.id) == 1


def test_health_is_a_frozen_report_with_ok_derived(clean_db: str) -> None:
    with Store.open(clean_db, **SMALL) as store:
        health = store.health()
    assert isinstance(health, StoreHealth)
    assert isinstance(health.database, PartHealth)
    with pytest.raises(dataclasses.FrozenInstanceError):
        health.ok = False  # type: ignore[misc]
    report = dataclasses.asdict(health)
    assert report["ok"] is True
    assert set(report) == {"ok", "database", "listener", "writer", "pool"}
    sick = StoreHealth(
        database=PartHealth(True, "fine"), writer=PartHealth(False, "backlog")
    )
    assert not sick.ok
    assert StoreHealth(database=PartHealth(True, "fine")).ok


def test_sync_memory_store_has_the_same_parts() -> None:
    with Store.memory() as store:
        assert isinstance(store.tenants, CachedTenantRepository)
        assert isinstance(store.tenants.inner, InMemoryTenantRepository)
        assert (store.listener, store.pool) == (None, None)
        assert store.writer is not None
        assert store.budgets is not None
        tenant, key = new_tenant("1.00")
        created = store.tenants.create(tenant)
        assert store.tenants.get_by_api_key(key) == created
        store.budgets.reserve(created, Decimal("0.50")).settle(
            record(created.id, "a", "0.40")
        )
        with pytest.raises(BudgetExceeded):
            store.budgets.reserve(created, Decimal("0.70"))
        store.writer.submit(record(created.id, "b", "0.10"))
        store.writer.flush(DEADLINE)
        total = store.usage.get_tenant_total_cost(created.id, EPOCH)
        assert total == Decimal("0.50")
        store.tenants.delete(created.id)
        with pytest.raises(TenantNotFound):
            store.tenants.get_by_api_key(key)
        health = store.health()
        assert health.ok
        assert health.database.detail == "in memory"
    assert not store.health().ok  # closed
    bare = Store.memory(cache=False, writer=False, budgets=False)
    assert isinstance(bare.tenants, InMemoryTenantRepository)
    assert (bare.writer, bare.budgets) == (None, None)
    bare.close()


# -- async ---------------------------------------------------------------------


async def eventually_healthy(store: AsyncStore) -> None:
    """Poll `health()` (a coroutine: `async_wait_until` polls plain callables)."""
    deadline = time.monotonic() + DEADLINE
    while not (health := await store.health()).ok:
        if time.monotonic() > deadline:
            pytest.fail(f"the store did not become healthy: {health}")
        await asyncio.sleep(0.01)


def test_async_store_parts_work_end_to_end(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def test() -> None:
        async with AsyncStore.open(clean_db, **SMALL) as store:
            assert isinstance(store.tenants, AsyncCachedTenantRepository)
            assert isinstance(store.listener, AsyncTenantCacheListener)
            assert store.listener.connected
            assert isinstance(store.pool, AsyncConnectionPool)
            assert isinstance(store.writer, AsyncUsageWriter)
            assert isinstance(store.budgets, AsyncBudgetGuard)

            tenant, key = new_tenant("1.00")
            created = await store.tenants.create(tenant)
            assert await store.tenants.get_by_api_key(key) == created
            reservation = await store.budgets.reserve(created, Decimal("0.50"))
            assert await reservation.settle(record(created.id, "settled", "0.40"))
            with pytest.raises(BudgetExceeded):
                await store.budgets.reserve(created, Decimal("0.70"))
            store.writer.submit(record(created.id, "submitted", "0.10"))
            await store.writer.flush(DEADLINE)
            summary = await store.usage.get_tenant_usage_summary(
                created.id, date(2000, 1, 1)
            )
            assert [(s.records, s.cost_usd) for s in summary] == [(2, Decimal("0.50"))]
            user = await store.admins.create("ops", "correct horse", "admin")
            assert await store.admins.authenticate("ops", "correct horse") == user
            assert (await store.health()).ok
        assert store.pool.closed
        assert not (await store.health()).ok

    runner.run(test())


def test_async_open_awaited_then_entered_and_closed_twice(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def test() -> None:
        store = await AsyncStore.open(clean_db, writer={"max_delay": 60.0}, **SMALL)
        assert store.writer is not None
        created = await store.tenants.create(new_tenant()[0])
        async with store:
            for i in range(20):
                store.writer.submit(record(created.id, f"r{i}"))
        assert usage_rows(clean_db, created.id) == 20
        await store.close()  # again: nothing to do
        assert store.pool is not None
        assert store.pool.closed
        with pytest.raises(TenantStoreError):
            store.writer.submit(record(created.id, "late"))

    runner.run(test())


def test_async_failed_open_leaks_no_connection(
    clean_db: str, proxy: TcpProxy, runner: asyncio.Runner
) -> None:
    url, name = named(clean_db)
    proxy.refuse()

    async def test() -> None:
        tasks = asyncio.all_tasks()
        with pytest.raises(DatabaseUnreachable, match="listener"):
            async with AsyncStore.open(url, listen_url=proxy.url(url), **SMALL):
                pytest.fail("opened with the listener refused")
        with pytest.raises(DatabaseUnreachable, match="did not answer"):
            await AsyncStore.open(proxy.url(url), **SMALL)
        assert asyncio.all_tasks() == tasks  # no listener or writer task left

    runner.run(test())
    wait_until(lambda: sessions(clean_db, name) == 0, "the pool's sessions end")
    assert proxy.connections() == 0


def test_async_health_reports_an_unreachable_server(
    clean_db: str, proxy: TcpProxy, runner: asyncio.Runner
) -> None:
    async def test() -> None:
        url = proxy.url(clean_db)
        async with AsyncStore.open(url, **SMALL) as store:
            assert (await store.health()).ok
            proxy.refuse()
            proxy.cut()
            health = await store.health()
            assert not health.ok
            assert not health.database.ok
            listener = store.listener
            assert listener is not None
            await async_wait_until(
                lambda: not listener.connected, "the listener sees the cut"
            )
            part = (await store.health()).listener
            assert part is not None
            assert not part.ok
            proxy.passthrough()
            assert await listener.wait_connected(DEADLINE)
            await eventually_healthy(store)

    runner.run(test())


def test_async_memory_store(runner: asyncio.Runner) -> None:
    async def test() -> None:
        async with AsyncStore.memory() as store:
            assert isinstance(store.tenants, AsyncCachedTenantRepository)
            assert isinstance(store.tenants.inner, AsyncInMemoryTenantRepository)
            assert (store.listener, store.pool) == (None, None)
            assert store.writer is not None
            assert store.budgets is not None
            tenant, key = new_tenant("1.00")
            created = await store.tenants.create(tenant)
            assert await store.tenants.get_by_api_key(key) == created
            held = await store.budgets.reserve(created, Decimal("0.50"))
            await held.settle(record(created.id, "a", "0.40"))
            store.writer.submit(record(created.id, "b", "0.10"))
            await store.writer.flush(DEADLINE)
            total = await store.usage.get_tenant_total_cost(created.id, EPOCH)
            assert total == Decimal("0.50")
            assert (await store.health()).ok
        with pytest.raises(TenantStoreError):
            store.writer.submit(record(created.id, "late"))
        bare = AsyncStore.memory(cache=False, writer=False, budgets=False)
        assert isinstance(bare.tenants, AsyncInMemoryTenantRepository)
        await bare.close()

    runner.run(test())


def test_async_open_through_a_pool_without_the_cache(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def test() -> None:
        async with AsyncStore.open(clean_db, cache=False, **SMALL) as store:
            assert isinstance(store.tenants, AsyncPostgresTenantRepository)
            assert store.listener is None
            created = await store.tenants.create(new_tenant()[0])
            assert await store.tenants.get_by_id(created.id) == created

    runner.run(test())


def test_unhealthy_database_detail_is_a_store_error_not_a_driver_one(
    clean_db: str, proxy: TcpProxy
) -> None:
    with Store.open(proxy.url(clean_db), listener=False, **SMALL) as store:
        proxy.refuse()
        proxy.cut()
        part = store.health().database
        assert not part.ok
        assert part.detail.split(":")[0] in {
            DatabaseUnreachable.__name__,
            StoreUnavailable.__name__,
        }
        proxy.passthrough()
