"""The budget guard's contract, case by case, on the in-memory store and PostgreSQL.

The state machine (tests/test_budget_differential.py) shows the backends agree and
the invariant holds; these pin down what the answers are: the month rule, 0 as no
limit, refusals and their figures, overshoot, other writers, budget changes, the
alerts, leases handed back, expired and returned, and the errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tenantstore import (
    AsyncBudgetGuard,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    AsyncUsageWriter,
    BudgetAlert,
    BudgetExceeded,
    BudgetGuard,
    CachedTenantRepository,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    InvalidInput,
    PostgresTenantRepository,
    PostgresUsageRepository,
    StoreUnavailable,
    Tenant,
    TenantCacheListener,
    UsageRecord,
    UsageWriter,
    create_pool,
    generate_api_key,
    hash_api_key,
)
from tenantstore._budgetstate import Snapshot, plan
from tests.fix_backends import FakeClock
from tests.polling import wait_until
from tests.tcpproxy import tcp_proxy

D = Decimal
_ids = itertools.count()


@dataclasses.dataclass
class Store:
    tenants: Any
    usage: Any
    clock: FakeClock
    guards: list[BudgetGuard] = dataclasses.field(default_factory=list)

    def guard(self, **options: Any) -> BudgetGuard:
        options.setdefault("clock", self.clock)
        options.setdefault("renew_interval", None)
        options.setdefault("reclaim_wait", 0)
        guard = BudgetGuard(self.tenants, self.usage, **options)
        self.guards.append(guard)
        return guard

    def tenant(self, budget: str) -> Tenant:
        created: Tenant = self.tenants.create(
            Tenant(
                name="t",
                api_key_hash=hash_api_key(generate_api_key()),
                budget_usd=D(budget),
            )
        )
        return created

    def record(self, tenant: Tenant, cost: str) -> UsageRecord:
        return UsageRecord(
            tenant_id=tenant.id,
            request_id=f"r-{next(_ids)}",
            model="gpt-4o",
            provider="openai",
            cost_usd=D(cost),
        )


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    clock = FakeClock()
    if request.param == "memory":
        tenants: Any = InMemoryTenantRepository(clock=clock)
        made = Store(tenants, InMemoryUsageRepository(tenants), clock)
    else:
        pool: ConnectionPool = request.getfixturevalue("pool")
        made = Store(
            PostgresTenantRepository(pool, clock=clock),
            PostgresUsageRepository(pool, clock=clock),
            clock,
        )
    yield made
    for guard in made.guards:
        guard.close()


def test_zero_is_no_limit(store: Store) -> None:
    tenant = store.tenant("0")
    guard = store.guard()
    reservation = guard.reserve(tenant, D("1000000"))
    assert reservation.settle(store.record(tenant, "5000"))
    status = guard.status(tenant)
    assert (status.spent_usd, status.remaining_usd, status.level) == (
        D("5000"),
        None,
        None,
    )


def test_refused_when_spend_holds_and_estimate_pass_the_budget(store: Store) -> None:
    tenant = store.tenant("1.00")
    guard = store.guard()
    first = guard.reserve(tenant, D("0.60"))
    assert first.settle(store.record(tenant, "0.50"))
    held = guard.reserve(tenant, D("0.30"))
    with pytest.raises(BudgetExceeded) as refused:
        guard.reserve(tenant, D("0.21"))
    assert (refused.value.budget_usd, refused.value.spent_usd) == (D("1.00"), D("0.50"))
    assert refused.value.held_usd == D("0.30")
    assert refused.value.estimate_usd == D("0.21")
    assert isinstance(refused.value, BudgetExceeded)
    exact = guard.reserve(tenant, D("0.20"))  # reaching the budget exactly is fine
    status = guard.status(tenant)
    assert (status.spent_usd, status.held_usd, status.remaining_usd) == (
        D("0.50"),
        D("0.50"),
        D("0"),
    )
    held.release()
    exact.release()
    assert guard.status(tenant).held_usd == 0


def test_at_the_budget_even_an_estimate_of_zero_is_refused(store: Store) -> None:
    tenant = store.tenant("1.00")
    guard = store.guard()
    guard.reserve(tenant, D("1.00")).settle(store.record(tenant, "1.00"))
    with pytest.raises(BudgetExceeded):
        guard.reserve(tenant, D("0"))


def test_a_settle_above_its_estimate_overshoots_by_its_excess_only(
    store: Store,
) -> None:
    tenant = store.tenant("1.00")
    guard = store.guard()
    small = guard.reserve(tenant, D("0.40"))
    other = guard.reserve(tenant, D("0.50"))
    assert small.settle(store.record(tenant, "0.70"))  # 0.30 beyond its estimate
    with pytest.raises(BudgetExceeded):
        guard.reserve(tenant, D("0.01"))
    assert other.settle(store.record(tenant, "0.50"))
    status = guard.status(tenant)
    assert status.spent_usd == D("1.20")  # the budget plus the one excess
    assert status.level == "exceeded"
    with pytest.raises(BudgetExceeded):
        guard.reserve(tenant, D("0"))


def test_usage_recorded_around_the_guard_counts_from_the_next_lease_step(
    store: Store,
) -> None:
    tenant = store.tenant("1.00")
    guard = store.guard(lease_time=60.0)
    guard.reserve(tenant, D("0.10")).release()  # a share is leased now
    store.usage.record(store.record(tenant, "0.95"))  # the Go service, say
    assert guard.status(tenant).spent_usd == D("0.95")
    store.clock.advance(30.0)  # renewal is due at half the lease time
    guard.renew()
    with pytest.raises(BudgetExceeded) as refused:
        guard.reserve(tenant, D("0.10"))
    assert refused.value.spent_usd == D("0.95")
    guard.reserve(tenant, D("0.05")).release()


def test_a_budget_change_applies_to_the_next_reservation(store: Store) -> None:
    tenant = store.tenant("1.00")
    guard = store.guard()
    guard.reserve(tenant, D("0.20")).settle(store.record(tenant, "0.20"))
    lowered = store.tenants.update(dataclasses.replace(tenant, budget_usd=D("0.30")))
    with pytest.raises(BudgetExceeded) as refused:
        guard.reserve(lowered, D("0.20"))
    assert refused.value.budget_usd == D("0.30")
    unlimited = store.tenants.update(dataclasses.replace(lowered, budget_usd=D("0")))
    guard.reserve(unlimited, D("50")).settle(store.record(tenant, "50"))
    raised = store.tenants.update(dataclasses.replace(unlimited, budget_usd=D("100")))
    guard.reserve(raised, D("49.80")).release()
    with pytest.raises(BudgetExceeded):
        guard.reserve(raised, D("49.81"))


def test_the_month_is_the_utc_calendar_month_and_alerts_fire_again(
    store: Store,
) -> None:
    tenant = store.tenant("1.00")
    alerts: list[BudgetAlert] = []
    guard = store.guard()
    guard.on_threshold(alerts.append)
    store.clock.advance(timedelta(days=30, hours=23).total_seconds())  # Jan 31 23:00
    guard.reserve(tenant, D("0.85")).settle(store.record(tenant, "0.85"))
    assert [(a.level, a.spent_usd) for a in alerts] == [("warning", D("0.85"))]
    assert guard.status(tenant).level == "warning"
    store.clock.advance(3600.0)  # Feb 1, 00:00 UTC
    status = guard.status(tenant)
    assert (status.spent_usd, status.level) == (D("0"), None)
    assert status.period_start.isoformat() == "2026-02-01T00:00:00+00:00"
    assert status.period_end.isoformat() == "2026-03-01T00:00:00+00:00"
    guard.reserve(tenant, D("1.00")).settle(store.record(tenant, "1.00"))
    assert [(a.level, a.period_start.month) for a in alerts[1:]] == [
        ("warning", 2),
        ("critical", 2),
        ("exceeded", 2),
    ]


def test_each_level_fires_once_across_guards(store: Store) -> None:
    tenant = store.tenant("1.00")
    alerts: list[tuple[int, str]] = []
    guards = [store.guard() for _ in range(3)]
    for i, guard in enumerate(guards):

        def seen(alert: BudgetAlert, i: int = i) -> None:
            alerts.append((i, alert.level))

        guard.on_threshold(seen)
    for _ in range(10):
        for guard in guards:
            with contextlib.suppress(BudgetExceeded):
                guard.reserve(tenant, D("0.05")).settle(store.record(tenant, "0.05"))
            guard.status(tenant)
            guard.renew()  # answers the others' reclaims
    assert guards[0].status(tenant).spent_usd == D("1.00")
    assert sorted(level for _, level in alerts) == ["critical", "exceeded", "warning"]


def test_a_crashed_guards_share_comes_back_after_the_lease_time(store: Store) -> None:
    tenant = store.tenant("1.00")
    crashed = store.guard(lease_time=10.0)
    crashed.reserve(tenant, D("0.10"))  # never settled: the process died
    store.guards.remove(crashed)  # and never closed
    survivor = store.guard(lease_time=10.0)
    with pytest.raises(BudgetExceeded):
        survivor.reserve(tenant, D("0.95"))
    store.clock.advance(9.0)
    with pytest.raises(BudgetExceeded):
        survivor.reserve(tenant, D("0.95"))
    store.clock.advance(1.0)
    survivor.reserve(tenant, D("1.00")).release()


def test_close_gives_the_lease_back(store: Store) -> None:
    tenant = store.tenant("1.00")
    first = store.guard()
    first.reserve(tenant, D("0.10")).release()
    second = store.guard()
    assert second.status(tenant).held_usd > 0  # first keeps an idle share
    first.close()
    assert second.status(tenant).held_usd == 0
    with pytest.raises(InvalidInput) as closed:
        first.reserve(tenant, D("0.10"))  # its share went back: nothing to grant
    assert closed.value.field == "guard"
    second.reserve(tenant, D("1.00")).release()


def test_a_refused_guard_gets_the_others_idle_share_back(store: Store) -> None:
    tenant = store.tenant("1.00")
    idle = store.guard(lease_time=60.0)
    idle.reserve(tenant, D("0.10")).release()  # leases half the budget, idle
    short = store.guard(lease_time=60.0)
    with pytest.raises(BudgetExceeded):
        short.reserve(tenant, D("0.80"))  # asks the others to go lean
    idle.renew()  # its next renewal answers
    short.reserve(tenant, D("0.80")).release()


def test_an_idle_guard_gives_its_share_back_at_renewal(store: Store) -> None:
    tenant = store.tenant("1.00")
    idle = store.guard(lease_time=10.0)
    idle.reserve(tenant, D("0.10")).release()
    other = store.guard(lease_time=10.0)
    assert other.status(tenant).held_usd > 0
    store.clock.advance(10.0)
    idle.renew()
    assert other.status(tenant).held_usd == 0


def test_the_reservation_errors(store: Store) -> None:
    tenant = store.tenant("1.00")
    guard = store.guard()
    with pytest.raises(InvalidInput) as bad:
        guard.reserve(tenant, D("-1"))
    assert bad.value.field == "estimate"
    with pytest.raises(InvalidInput) as bad:
        guard.reserve("tenant-id", D("1"))  # type: ignore[arg-type]
    assert bad.value.field == "tenant"
    reservation = guard.reserve(tenant, D("0.10"))
    with pytest.raises(InvalidInput) as bad:
        reservation.settle(
            dataclasses.replace(
                store.record(tenant, "0.1"), tenant_id=store.tenant("1").id
            )
        )
    assert bad.value.field == "record.tenant_id"
    record = store.record(tenant, "0.10")
    assert reservation.settle(record)
    reservation.release()  # after settle: nothing happens
    with pytest.raises(InvalidInput):
        reservation.settle(record)
    again = guard.reserve(tenant, D("0.10"))
    assert again.settle(record) is False  # recorded before: the hold goes back
    status = guard.status(tenant)
    assert (status.spent_usd, status.held_usd) == (D("0.10"), D("0"))
    assert "estimate 0.10" in repr(again)


def test_budget_changes_reach_other_processes_through_the_listener(
    pool: ConnectionPool, clean_db: str
) -> None:
    key = generate_api_key()
    with TenantCacheListener(
        clean_db, cached := CachedTenantRepository(PostgresTenantRepository(pool))
    ) as listener:
        listener.wait_connected(5.0)
        tenant = cached.create(
            Tenant(name="t", api_key_hash=hash_api_key(key), budget_usd=D("10"))
        )
        with BudgetGuard(
            cached, PostgresUsageRepository(pool), renew_interval=None
        ) as guard:
            guard.reserve(cached.get_by_api_key(key), D("5")).release()
            with psycopg.connect(clean_db, autocommit=True) as conn:  # psql, say
                conn.execute(
                    "UPDATE tenants SET budget_usd = 1 WHERE id = %s", (tenant.id,)
                )
            wait_until(
                lambda: cached.get_by_api_key(key).budget_usd == D("1"),
                "the listener has invalidated the tenant",
            )
            with pytest.raises(BudgetExceeded) as refused:
                guard.reserve(cached.get_by_api_key(key), D("5"))
            assert refused.value.budget_usd == D("1")


def test_the_async_guard(apool: Any, runner: asyncio.Runner) -> None:
    async def main() -> list[str]:
        tenants = AsyncPostgresTenantRepository(apool)
        usage = AsyncPostgresUsageRepository(apool)
        tenant = await tenants.create(
            Tenant(name="t", api_key_hash=hash_api_key("k"), budget_usd=D("1.00"))
        )
        alerts: list[str] = []
        async with AsyncBudgetGuard(
            tenants, usage, lease_time=5.0, renew_interval=0.1
        ) as guard:
            guard.on_threshold(lambda alert: alerts.append(alert.level))

            async def spend(i: int) -> None:
                try:
                    reservation = await guard.reserve(tenant, D("0.10"))
                except BudgetExceeded:
                    return
                await reservation.settle(
                    UsageRecord(
                        tenant_id=tenant.id,
                        request_id=f"a-{i}",
                        model="m",
                        provider="p",
                        cost_usd=D("0.10"),
                    )
                )

            await asyncio.gather(*(spend(i) for i in range(15)))
            status = await guard.status(tenant)
            assert (status.spent_usd, status.held_usd) == (D("1.00"), D("0"))
        return alerts

    assert runner.run(main()) == ["warning", "critical", "exceeded"]


def test_guard_options_are_checked(store: Store) -> None:
    for options in (
        {"lease_time": 0},
        {"renew_interval": 6.0, "lease_time": 10.0},
        {"reclaim_wait": -1},
    ):
        with pytest.raises(InvalidInput):
            BudgetGuard(store.tenants, store.usage, **options)
    with pytest.raises(InvalidInput) as bad:
        BudgetGuard(store.tenants, object())
    assert bad.value.field == "usage"


def test_reservations_come_from_the_held_share_without_io(store: Store) -> None:
    tenant = store.tenant("100.00")
    guard = store.guard()
    for _ in range(10):
        guard.reserve(tenant, D("0.01")).release()
    stats = guard.stats()
    assert (stats.reserved, stats.reserved_locally, stats.lease_steps) == (10, 9, 1)
    trips = stats.round_trips
    guard.reserve(tenant, D("0.01")).settle(store.record(tenant, "0.01"))
    stats = guard.stats()
    assert (stats.settled, stats.refused) == (1, 0)
    # A settle is one statement (the record and the lease change together).
    assert stats.round_trips - trips == (
        0 if isinstance(store.usage, InMemoryUsageRepository) else 1
    )


def test_the_held_share_outlives_an_outage_and_a_failed_settle_stays_open(
    clean_db: str,
) -> None:
    clock = FakeClock(datetime.now(UTC))
    with tcp_proxy(clean_db) as proxy:
        url = proxy.url(clean_db)
        with create_pool(url, min_size=0, max_size=2, timeout=2.0) as pool:
            tenants = PostgresTenantRepository(pool, clock=clock)
            usage = PostgresUsageRepository(pool, clock=clock)
            tenant = tenants.create(
                Tenant(name="t", api_key_hash=hash_api_key("k"), budget_usd=D("10"))
            )
            guard = BudgetGuard(
                tenants, usage, clock=clock, lease_time=20.0, renew_interval=None
            )
            guard.reserve(tenant, D("0.10")).release()  # holds a share now
            proxy.refuse()
            proxy.cut()
            # No I/O: granted from the share while the database is out of reach.
            reservation = guard.reserve(tenant, D("0.10"))
            record = UsageRecord(
                tenant_id=tenant.id,
                request_id="r-outage",
                model="m",
                provider="p",
                cost_usd=D("0.10"),
            )
            with pytest.raises(StoreUnavailable):
                reservation.settle(record)
            clock.advance(16.0)  # past the share's safe time: fail closed
            with pytest.raises(StoreUnavailable):
                guard.reserve(tenant, D("0.10"))
            proxy.passthrough()
            settled: list[bool] = []

            def settle() -> bool:
                try:
                    settled.append(reservation.settle(record))  # still open
                except StoreUnavailable:
                    return False  # the pool is still reconnecting
                return True

            wait_until(settle, "the settle went through")
            assert settled == [True]
            status = guard.status(tenant)
            assert (status.spent_usd, guard.stats().refused) == (D("0.10"), 0)
            guard.close()


def test_a_settle_through_a_writer_holds_until_its_batch_commits(store: Store) -> None:
    tenant = store.tenant("1.00")
    with UsageWriter(store.usage, max_delay=3600) as writer:
        guard = store.guard(writer=writer)
        record = store.record(tenant, "0.30")
        assert guard.reserve(tenant, D("0.40")).settle(record) is True
        # Queued, not written: the hold still counts, the spend not yet.
        status = guard.status(tenant)
        assert (status.spent_usd, status.held_usd) == (D("0"), D("0.40"))
        with pytest.raises(BudgetExceeded):
            guard.reserve(tenant, D("0.70"))  # 0.40 held + 0.70 > 1.00
        writer.flush()
        status = guard.status(tenant)
        assert (status.spent_usd, status.held_usd) == (D("0.30"), D("0"))
        assert guard.stats().settled == 1
        guard.reserve(tenant, D("0.70")).release()  # 0.30 + 0.70 = 1.00
        # A duplicate (a retried request) spends nothing: its hold goes back.
        assert guard.reserve(tenant, D("0.20")).settle(record) is True
        assert guard.status(tenant).held_usd == D("0.20")
        writer.flush()
        status = guard.status(tenant)
        assert (status.spent_usd, status.held_usd) == (D("0.30"), D("0"))
        assert (writer.stats().written, writer.stats().duplicates) == (1, 1)
        assert guard.stats().settled == 1
        guard.reserve(tenant, D("0.70")).release()


def test_the_async_guard_settles_through_an_async_writer(
    apool: Any, runner: asyncio.Runner
) -> None:
    async def main() -> None:
        tenants = AsyncPostgresTenantRepository(apool)
        usage = AsyncPostgresUsageRepository(apool)
        tenant = await tenants.create(
            Tenant(name="t", api_key_hash=hash_api_key("k"), budget_usd=D("1.00"))
        )
        async with (
            AsyncUsageWriter(usage, max_delay=3600) as writer,
            AsyncBudgetGuard(
                tenants, usage, renew_interval=None, writer=writer
            ) as guard,
        ):
            settled = []
            for i in range(12):
                try:
                    reservation = await guard.reserve(tenant, D("0.10"))
                except BudgetExceeded:
                    continue
                record = UsageRecord(
                    tenant_id=tenant.id,
                    request_id=f"w-{i % 8}",  # the last ones are retries
                    model="m",
                    provider="p",
                    cost_usd=D("0.10"),
                )
                settled.append(await reservation.settle(record))
                status = await guard.status(tenant)
                assert status.spent_usd + status.held_usd <= D("1.00")
            assert settled == [True] * 10  # 10 held before anything was written
            await writer.flush()
            status = await guard.status(tenant)
            assert (status.spent_usd, status.held_usd) == (D("0.80"), D("0"))
            assert (writer.stats().written, writer.stats().duplicates) == (8, 2)
            await (await guard.reserve(tenant, D("0.20"))).release()

    runner.run(main())


def test_a_lean_guard_settling_through_a_writer_strands_nothing(store: Store) -> None:
    tenant = store.tenant("1.00")
    with UsageWriter(store.usage, max_delay=3600) as writer:
        guard = store.guard(writer=writer)
        alerts: list[str] = []
        guard.on_threshold(lambda alert: alerts.append(alert.level))
        reservation = guard.reserve(tenant, D("0.10"))
        other = store.guard()
        other.on_threshold(lambda alert: alerts.append(alert.level))
        held = []
        with contextlib.suppress(BudgetExceeded):
            for _ in range(20):
                held.append(other.reserve(tenant, D("0.10")))
        guard.renew()  # the other was short: this guard goes lean
        reservation.settle(store.record(tenant, "0.05"))
        writer.flush()
        # The book still counts the settled estimate in this guard's lease until
        # its next renewal rebases it; then the other can spend all of the rest.
        guard.renew()
        with contextlib.suppress(BudgetExceeded):
            for _ in range(200):
                held.append(other.reserve(tenant, D("0.01")))
        status = other.status(tenant)
        assert (status.spent_usd, status.held_usd) == (D("0.05"), D("0.95"))
        for hold in held:
            hold.settle(store.record(tenant, str(hold.estimate_usd)))
        guard.renew()
        assert other.status(tenant).spent_usd == D("1.00")
        assert alerts == ["warning", "critical", "exceeded"]  # once each, in all


def test_alerts_a_writer_settle_crosses_fire_at_the_next_renewal(store: Store) -> None:
    tenant = store.tenant("1.00")
    with UsageWriter(store.usage, max_delay=3600) as writer:
        guard = store.guard(writer=writer)
        alerts: list[str] = []
        guard.on_threshold(lambda alert: alerts.append(alert.level))
        guard.reserve(tenant, D("0.90")).settle(store.record(tenant, "0.85"))
        writer.flush()
        guard.renew()
        assert alerts == ["warning"]
        guard.renew()
        assert alerts == ["warning"]  # once


def test_close_writes_the_queued_settles_before_giving_the_lease_back(
    store: Store,
) -> None:
    tenant = store.tenant("1.00")
    with UsageWriter(store.usage, max_delay=3600) as writer:
        guard = store.guard(writer=writer)
        guard.reserve(tenant, D("0.50")).settle(store.record(tenant, "0.40"))
        guard.close()
        # Written first, then the lease went back: never counted nowhere.
        assert writer.stats().pending == 0
        status = store.guard().status(tenant)
        assert (status.spent_usd, status.held_usd) == (D("0.40"), D("0"))


def test_a_refused_step_keeps_every_hold_in_the_book() -> None:
    # 0.95 of 1.00 spent, counting a reservation of 0.05 settled (at cost) after
    # `held` was read; held: that 0.05 and another open 0.05. Its settle lowers
    # the book by 0.05 after this step writes: the book must still count the
    # other open hold, or the other holders could grant it again.
    snap = Snapshot(Decimal("1.00"), Decimal("0.95"), Decimal(0), 1, True, False)
    decision = plan(
        snap, Decimal("0.10"), Decimal("0.05"), idle=False, typical=Decimal("0.05")
    )
    assert not decision.granted
    assert decision.target - Decimal("0.05") == Decimal("0.05")
