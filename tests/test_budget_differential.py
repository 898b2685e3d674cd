"""The budget guard, driven by random operations, agrees across backends.

A hypothesis state machine runs two guards ("two processes") over each of the
in-memory store, PostgreSQL (sync) and PostgreSQL (async), all on one fake clock:
reservations, settles below, at and above the estimate, duplicate settles,
releases, budget changes, usage recorded around the guard, renewals, time passing
and the clock crossing into a new month. After every step all backends gave the
same answers (grants, refusals with their figures, settle results, statuses and
fired alerts), and the invariant holds: spend plus open holds stays within the
budget, plus exactly the slack the design allows (costs beyond estimates, usage
recorded around the guards, budget cuts, holds carried into a new month).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncBudgetGuard,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    AsyncUsageWriter,
    BudgetAlert,
    BudgetExceeded,
    BudgetGuard,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    TenantStoreError,
    UsageRecord,
    UsageWriter,
    create_async_pool,
    hash_api_key,
    migrate,
)
from tenantstore._budgetstate import month_of
from tests.fix_backends import FakeClock
from tests.fix_postgres import truncate
from tests.pgserver import scratch_database

LEASE_TIME = 600.0  # far beyond the steps' clock moves: no lease expires by surprise
ESTIMATES = [Decimal(x) for x in ("0", "0.01", "0.10", "0.25", "0.40", "1.00")]
BUDGETS = [Decimal(x) for x in ("0", "0.50", "1.00", "2.00")]
HASHES = [hash_api_key(f"key-{i}") for i in range(2)]
GUARDS = st.integers(0, 2)  # the third settles through a usage writer


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except BudgetExceeded as exc:
        return ("refused", (exc.budget_usd, exc.spent_usd, exc.held_usd))
    except TenantStoreError as exc:
        return ("error", type(exc))


async def _in_loop(make: Callable[[], Any]) -> Any:
    return make()


class Side:
    """One backend: its repositories and three guards, called as if all were sync.

    The third guard settles through a usage writer, which writes only when the
    machine flushes it (or a guard closes): its batches never fill, nor come due.
    """

    def __init__(
        self,
        name: str,
        tenants: Any,
        usage: Any,
        clock: FakeClock,
        run: Callable[[Any], Any] | None = None,
        guard_type: Any = BudgetGuard,
        writer_type: Any = UsageWriter,
    ) -> None:
        self.name = name
        self.tenants = tenants
        self.usage = usage
        self._run = run or (lambda value: value)
        self.alerts: list[tuple[str, str, Decimal]] = []

        def make_writer() -> Any:
            return writer_type(usage, max_batch=10_000, max_delay=3600, clock=clock)

        # An async writer's flusher is a task: made in the side's loop.
        self.writer = make_writer() if run is None else run(_in_loop(make_writer))
        self.guards = [
            guard_type(
                tenants,
                usage,
                clock=clock,
                lease_time=LEASE_TIME,
                renew_interval=None,
                reclaim_wait=0,
                writer=writer,
            )
            for writer in (None, None, self.writer)
        ]
        for guard in self.guards:
            guard.on_threshold(self._alert)

    def _alert(self, alert: BudgetAlert) -> None:
        self.alerts.append((alert.tenant_id, alert.level, alert.spent_usd))

    def call(self, value: Any) -> Any:
        return self._run(value)

    def close(self) -> None:
        for guard in self.guards:
            self.call(guard.close())
        self.call(self.writer.close())


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self, sides: list[Side], clock: FakeClock) -> None:
        super().__init__()
        self.sides = sides
        self.clock = clock
        self.tenant_ids: list[str] = []
        # Open reservations: (tenant index, estimate, one reservation per side,
        # the guard that made them).
        self.open: list[tuple[int, Decimal, list[Any], int]] = []
        self.request_ids = itertools.count()
        self.settled: list[str] = []
        self.slack: list[Decimal] = []
        self.budgets: list[Decimal] = []

    def each(self, action: Callable[[Side], Any]) -> Any:
        results = [outcome(functools.partial(action, side)) for side in self.sides]
        first = results[0]
        for side, result in zip(self.sides[1:], results[1:], strict=True):
            assert result == first, (self.sides[0].name, first, side.name, result)
        return first

    @initialize(budgets=st.lists(st.sampled_from(BUDGETS[1:]), min_size=2, max_size=2))
    def tenants(self, budgets: list[Decimal]) -> None:
        for i, budget in enumerate(budgets):
            tenant = Tenant(name=f"t{i}", api_key_hash=HASHES[i], budget_usd=budget)
            for side in self.sides:
                side.call(side.tenants.create(tenant))
            self.tenant_ids.append(tenant.id)
            self.slack.append(Decimal(0))
            self.budgets.append(budget)

    def tenant(self, side: Side, index: int) -> Tenant:
        tenant: Tenant = side.call(side.tenants.get_by_id(self.tenant_ids[index]))
        return tenant

    @rule(
        guard=GUARDS,
        index=st.integers(0, 1),
        estimate=st.sampled_from(ESTIMATES),
    )
    def reserve(self, guard: int, index: int, estimate: Decimal) -> None:
        made: list[Any] = []

        def reserve(side: Side) -> str:
            reservation = side.call(
                side.guards[guard].reserve(self.tenant(side, index), estimate)
            )
            made.append(reservation)
            return "granted"

        result = self.each(reserve)
        if result[0] == "ok":
            assert len(made) == len(self.sides)
            self.open.append((index, estimate, made, guard))

    def _record(self, index: int, cost: Decimal, request_id: str) -> UsageRecord:
        return UsageRecord(
            tenant_id=self.tenant_ids[index],
            request_id=request_id,
            model="gpt-4o",
            provider="openai",
            cost_usd=cost,
        )

    @precondition(lambda self: self.open)
    @rule(
        data=st.data(),
        how=st.sampled_from(["below", "at", "above", "duplicate"]),
    )
    def settle(self, data: st.DataObject, how: str) -> None:
        position = data.draw(st.integers(0, len(self.open) - 1))
        index, estimate, reservations, _ = self.open.pop(position)
        cost = {
            "below": (estimate / 2).quantize(Decimal("0.0000000001")),
            "at": estimate,
            "above": estimate + Decimal("0.15"),
            "duplicate": estimate,
        }[how]
        if how == "duplicate" and self.settled:
            request_id = data.draw(st.sampled_from(self.settled))
        else:
            request_id = f"req-{next(self.request_ids)}"
        record = self._record(index, cost, request_id)
        result = self.each(
            lambda side: side.call(reservations[self.sides.index(side)].settle(record))
        )
        if result == ("ok", True):
            self.settled.append(request_id)
            if record.tenant_id == self.tenant_ids[index] and cost > estimate:
                self.slack[index] += cost - estimate

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(0, len(self.open) - 1))
        _, _, reservations, _ = self.open.pop(position)
        self.each(
            lambda side: side.call(reservations[self.sides.index(side)].release())
        )

    @rule(index=st.integers(0, 1), budget=st.sampled_from(BUDGETS))
    def change_budget(self, index: int, budget: Decimal) -> None:
        def change(side: Side) -> None:
            tenant = self.tenant(side, index)
            side.call(
                side.tenants.update(dataclasses.replace(tenant, budget_usd=budget))
            )

        self.each(change)
        old = self.budgets[index]
        if budget == 0 or old == 0:
            # Past an unlimited stretch anything may have been granted.
            self.slack[index] += self.held(index) + self.spent(index)
        elif budget < old:
            self.slack[index] += old - budget
        self.budgets[index] = budget

    @rule(index=st.integers(0, 1), cost=st.sampled_from(ESTIMATES[1:]))
    def record_around_the_guard(self, index: int, cost: Decimal) -> None:
        record = self._record(index, cost, f"raw-{next(self.request_ids)}")
        self.each(lambda side: side.call(side.usage.record(record)))
        self.slack[index] += cost

    @rule()
    def writer_flushes(self) -> None:
        # The batch commits: its holds end, duplicates among them spend nothing.
        self.each(lambda side: side.call(side.writer.flush()))
        # What the writer's guard holds is then exactly its open reservations.
        for index, tenant_id in enumerate(self.tenant_ids):
            expected = sum(
                (
                    estimate
                    for i, estimate, made, guard in self.open
                    if (i, guard) == (index, 2) and made[0]._lease is not None
                ),
                Decimal(0),
            )
            for side in self.sides:
                lease = side.guards[2]._leases.get(tenant_id)
                held = Decimal(0) if lease is None else lease.held
                assert held == expected, (side.name, index, held, expected)

    @rule(guard=GUARDS)
    def renew(self, guard: int) -> None:
        self.each(lambda side: side.call(side.guards[guard].renew()))

    @rule(guard=GUARDS, index=st.integers(0, 1))
    def status(self, guard: int, index: int) -> None:
        self.each(
            lambda side: side.call(side.guards[guard].status(self.tenant(side, index)))
        )

    @rule(seconds=st.sampled_from([1.0, 30.0, 200.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def next_month(self) -> None:
        end = month_of(self.clock.now())[1]
        seconds = (end - self.clock.now()).total_seconds() + 1.0
        self.clock.advance(seconds)
        # Holds granted last month are settled in this one.
        for index in range(len(self.tenant_ids)):
            self.slack[index] = self.held(index)

    def held(self, index: int) -> Decimal:
        return sum((open[1] for open in self.open if open[0] == index), Decimal(0))

    def spent(self, index: int) -> Decimal:
        side = self.sides[0]
        start = month_of(self.clock.now())[0]
        total: Decimal = side.call(
            side.usage.get_tenant_total_cost(self.tenant_ids[index], start)
        )
        return total

    @invariant()
    def same_alerts(self) -> None:
        first = self.sides[0].alerts
        for side in self.sides[1:]:
            assert side.alerts == first, (side.name, side.alerts, first)

    @invariant()
    def spend_and_holds_stay_within_the_budget(self) -> None:
        for index in range(len(self.tenant_ids)):
            budget = self.budgets[index]
            if budget == 0:
                continue
            total = self.spent(index) + self.held(index)
            assert total <= budget + self.slack[index], (
                index,
                total,
                budget,
                self.slack[index],
            )

    def teardown(self) -> None:
        for side in self.sides:
            side.close()


@pytest.fixture(scope="module")
def async_url(pg_url: str) -> Iterator[str]:
    with scratch_database() as url:
        migrate.up(url)
        yield url


def test_budget_guards_agree_on_every_backend(
    session_pool: ConnectionPool, pg_url: str, async_url: str
) -> None:
    runner = asyncio.Runner()
    apool: AsyncConnectionPool = runner.run(
        create_async_pool(async_url, min_size=1, max_size=2)
    )
    try:

        class Bound(BudgetMachine):
            def __init__(self) -> None:
                truncate(pg_url)
                truncate(async_url)
                clock = FakeClock()
                memory = InMemoryTenantRepository(clock=clock)
                sides = [
                    Side("memory", memory, InMemoryUsageRepository(memory), clock),
                    Side(
                        "postgres",
                        PostgresTenantRepository(session_pool, clock=clock),
                        PostgresUsageRepository(session_pool, clock=clock),
                        clock,
                    ),
                    Side(
                        "async postgres",
                        AsyncPostgresTenantRepository(apool, clock=clock),
                        AsyncPostgresUsageRepository(apool, clock=clock),
                        clock,
                        run=runner.run,
                        guard_type=AsyncBudgetGuard,
                        writer_type=AsyncUsageWriter,
                    ),
                ]
                super().__init__(sides, clock)

        # Capped: each example runs three backends, two of them on PostgreSQL.
        examples = min(settings().max_examples, 40)
        run_state_machine_as_test(Bound, settings=settings(max_examples=examples))
    finally:
        runner.run(apool.close())
        runner.close()


def test_a_month_is_the_calendar_month_in_utc() -> None:
    clock = FakeClock()
    clock.advance(timedelta(days=45, hours=3).total_seconds())  # 2026-02-15
    start, end = month_of(clock.now())
    assert (start.isoformat(), end.isoformat()) == (
        "2026-02-01T00:00:00+00:00",
        "2026-03-01T00:00:00+00:00",
    )
