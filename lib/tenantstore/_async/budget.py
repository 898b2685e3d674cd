"""The budget guard: reservations checked before the request, settled after it.

`AsyncBudgetGuard` grants reservations from a share of the tenant's monthly budget
that its process has leased from the store (PostgreSQL, or the in-memory backend's
lease book), without I/O while the share lasts; a lease step (one short
transaction) takes a new share when it runs out. The arithmetic and the local
bookkeeping live in `_budgetstate`, shared with the generated sync twin; the
statements in `_budgetsql`. What the guard guarantees, and why, is in
`_budgetstate`'s docstring and the README ("Budgets").
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from psycopg import AsyncConnection

from .. import _budgetsql
from .._acompat import AEvent, ALock, AWorker, Lock, aevent_wait, aspawn, astop_worker
from .._budgetstate import (
    _CLOSED,
    _ESTIMATES,
    ZERO,
    AlertLevel,
    BudgetAlert,
    BudgetStats,
    BudgetStatus,
    Decision,
    MemoryBook,
    Snapshot,
    TenantLease,
    crossed,
    estimate_amount,
    level_of,
    memory_book,
    memory_usage,
    month_of,
    plan,
)
from .._clock import SYSTEM_CLOCK, Clock
from .._memory import InMemoryUsageRepository
from .._models import RecordOutcome, Tenant, UsageRecord
from .._rows import usage_params, utc
from .._validation import usage_for_write
from ..errors import BudgetExceeded, InvalidInput, TenantNotFound, TenantStoreError
from .postgres import ALL, COUNT, ONE, AsyncPostgresUsageRepository, _total_cost_query
from .writer import AsyncUsageWriter

__all__ = ["AsyncBudgetGuard", "AsyncReservation"]

_log = logging.getLogger("tenantstore.budget")
_UNLIMITED: Final = None


def _month_params(tenant_id: str, start: datetime) -> tuple[str, dict[str, Any]]:
    spend, params = _total_cost_query(tenant_id, start)
    return _budgetsql.snapshot(spend), params


def _check_tenant(tenant: object) -> None:
    if not isinstance(tenant, Tenant):
        raise InvalidInput("tenant", f"must be a Tenant, not {type(tenant).__name__}")


class _AsyncPostgresBook:
    """Leases and alerts in PostgreSQL (migration 014), through the usage pool.

    Every statement runs through the usage repository's `_run`: the same
    bound (the wait for a connection, then the answer, past which the
    connection is shut down: `DatabaseUnreachable`), the same discarding of
    faulty connections and the same error mapping as the repositories. Only
    what is idempotent (the reads, giving leases back) is retried on a broken
    connection. `trips` counts the round trips to the server (a lease step
    takes two, its six statements pipelined; everything else one).
    """

    __slots__ = ("_lock", "_usage", "trips")

    def __init__(self, usage: AsyncPostgresUsageRepository) -> None:
        self._usage = usage
        self._lock = Lock()
        self.trips = 0

    def _count(self, trips: int) -> None:
        with self._lock:
            self.trips += trips

    def note_trip(self) -> None:
        """A round trip made through the usage repository (a plain settle)."""
        self._count(1)

    def _snapshot_params(
        self,
        tenant_id: str,
        holder: str,
        start: datetime,
        now: datetime,
        since: datetime,
    ) -> tuple[str, dict[str, Any]]:
        statement, params = _month_params(tenant_id, start)
        params.update(holder=holder, period=start.date(), now=now, reclaim_since=since)
        return statement, params

    async def step(
        self,
        tenant_id: str,
        holder: str,
        start: datetime,
        now: datetime,
        since: datetime,
        expires: datetime,
        lease_read: Decimal,
        planner: Callable[[Snapshot], Decision],
    ) -> Decision:
        statement, params = self._snapshot_params(tenant_id, holder, start, now, since)
        prepare = self._usage._prepare

        async def work(conn: AsyncConnection[Any]) -> Decision:
            # Pipelined: BEGIN, the lock, the clean-up and the snapshot go out
            # together (the server runs them in order, so the snapshot is taken
            # once the lock is held) and come back at the fetch; the write and
            # COMMIT are the second round trip.
            async with conn.pipeline(), conn.transaction():
                await conn.execute(
                    _budgetsql.LOCK_TENANT, {"lock_key": tenant_id}, prepare=prepare
                )
                await conn.execute(_budgetsql.DELETE_DEAD, params, prepare=prepare)
                cur = await conn.execute(statement, params, prepare=prepare)
                row = await cur.fetchone()
                assert row is not None
                decision = planner(Snapshot(*row))
                await conn.execute(
                    _budgetsql.WRITE_LEASE,
                    {
                        "tenant_id": tenant_id,
                        "holder": holder,
                        "period": start.date(),
                        "target": decision.target,
                        "delta": decision.target - lease_read,
                        "lean": decision.lean,
                        "short_at": now if decision.short else None,
                        "expires": expires,
                    },
                    prepare=prepare,
                )
            return decision

        self._count(2)
        # Not retried: a step whose answer was lost may have committed, and
        # its lease delta must not be applied twice.
        decision: Decision = await self._usage._run(
            _budgetsql.WRITE_LEASE, None, ONE, retry=False, work=work
        )
        return decision

    async def snapshot(
        self,
        tenant_id: str,
        holder: str,
        start: datetime,
        now: datetime,
        since: datetime,
    ) -> Snapshot:
        statement, params = self._snapshot_params(tenant_id, holder, start, now, since)
        row = await self._one(statement, params, retry=True)
        return Snapshot(*row)

    async def _one(self, statement: str, params: dict[str, Any], *, retry: bool) -> Any:
        self._count(1)
        return await self._usage._run(statement, params, ONE, retry=retry)

    async def _all(
        self, statement: str, params: dict[str, Any], *, retry: bool
    ) -> list[Any]:
        self._count(1)
        rows: list[Any] = await self._usage._run(statement, params, ALL, retry=retry)
        return rows

    async def settle(
        self,
        usage: Any,
        record: UsageRecord,
        holder: str,
        spent: Decimal,
        unspent: Decimal,
    ) -> bool:
        params = usage_params(record)
        params.update(holder=holder, spent=spent, unspent=unspent)
        # Not retried: the record is idempotent, the lease's decrement is not.
        row = await self._one(_budgetsql.SETTLE, params, retry=False)
        return bool(row[0])

    async def adjust(self, tenant_id: str, holder: str, delta: Decimal) -> None:
        self._count(1)
        await self._usage._run(
            _budgetsql.ADJUST_LEASE,
            {"tenant_id": tenant_id, "holder": holder, "delta": delta},
            COUNT,
            retry=False,
        )

    async def reclaims(
        self, tenant_ids: list[str], holder: str, now: datetime, since: datetime
    ) -> set[str]:
        rows = await self._all(
            _budgetsql.RECLAIMS,
            {
                "tenant_ids": tenant_ids,
                "holder": holder,
                "now": now,
                "reclaim_since": since,
            },
            retry=True,
        )
        return {row[0] for row in rows}

    async def fire(
        self, tenant_id: str, period: date, levels: list[AlertLevel], now: datetime
    ) -> list[AlertLevel]:
        # Not retried: an insert whose answer was lost would come back empty,
        # and the alert would fire nowhere.
        rows = await self._all(
            _budgetsql.FIRE_ALERTS,
            {"tenant_id": tenant_id, "period": period, "levels": levels, "now": now},
            retry=False,
        )
        fired = {row[0] for row in rows}
        return [level for level in levels if level in fired]

    async def drop(self, tenant_ids: list[str], holder: str) -> None:
        self._count(1)
        await self._usage._run(
            _budgetsql.DROP_LEASES,
            {"tenant_ids": tenant_ids, "holder": holder},
            COUNT,
            retry=True,
        )


class _AsyncMemoryBook:
    """The in-memory store's lease book (`_budgetstate.MemoryBook`), awaitable."""

    __slots__ = ("_book", "_usage", "trips")

    def __init__(self, usage: InMemoryUsageRepository) -> None:
        self._usage = usage
        self._book: MemoryBook = memory_book(usage)
        self.trips = 0  # no server, no round trips

    def note_trip(self) -> None:
        pass

    async def step(
        self,
        tenant_id: str,
        holder: str,
        start: datetime,
        now: datetime,
        since: datetime,
        expires: datetime,
        lease_read: Decimal,
        planner: Callable[[Snapshot], Decision],
    ) -> Decision:
        return self._book.step(
            tenant_id, holder, start.date(), now, since, expires, lease_read, planner
        )

    async def snapshot(
        self,
        tenant_id: str,
        holder: str,
        start: datetime,
        now: datetime,
        since: datetime,
    ) -> Snapshot:
        return self._book.snapshot(tenant_id, holder, start.date(), now, since)

    async def settle(
        self,
        usage: Any,
        record: UsageRecord,
        holder: str,
        spent: Decimal,
        unspent: Decimal,
    ) -> bool:
        return self._book.settle(self._usage, record, holder, spent, unspent)

    async def adjust(self, tenant_id: str, holder: str, delta: Decimal) -> None:
        self._book.adjust(tenant_id, holder, delta)

    async def reclaims(
        self, tenant_ids: list[str], holder: str, now: datetime, since: datetime
    ) -> set[str]:
        return self._book.reclaims(tenant_ids, holder, now, since)

    async def fire(
        self, tenant_id: str, period: date, levels: list[AlertLevel], now: datetime
    ) -> list[AlertLevel]:
        return self._book.fire(tenant_id, period, levels)

    async def drop(self, tenant_ids: list[str], holder: str) -> None:
        self._book.drop(tenant_ids, holder)


class AsyncReservation:
    """A hold on a tenant's budget, from `AsyncBudgetGuard.reserve`.

    Settle it with the request's usage record once the request is done, or
    release it when the request failed; a gateway does one or the other, once.
    """

    __module__ = "tenantstore"
    __slots__ = ("_done", "_guard", "_lease", "estimate_usd", "tenant_id")

    def __init__(
        self,
        guard: AsyncBudgetGuard,
        tenant_id: str,
        estimate: Decimal,
        lease: TenantLease | None,
    ) -> None:
        self._guard = guard
        self.tenant_id = tenant_id
        self.estimate_usd = estimate
        self._lease = lease  # None: the tenant has no limit, nothing is held
        self._done = False

    def __repr__(self) -> str:
        state = "done" if self._done else "open"
        return (
            f"<{type(self).__name__} tenant {self.tenant_id} "
            f"estimate {self.estimate_usd} {state}>"
        )

    async def settle(self, record: UsageRecord) -> bool:
        """Record the request's usage (its `cost_usd` is what it cost) and release
        the hold; as `usage.record`: False when this request was recorded before
        (the hold is released all the same). `record.tenant_id` must be the
        reserved tenant's. A reservation settles once: after `settle` or
        `release`, `InvalidInput`. On `StoreUnavailable` the reservation stays
        open: settle again, or release it. With the guard's `writer`, the record
        is queued (True) and the hold ends when its batch commits: a duplicate
        found then spends nothing.
        """
        if self._done:
            raise InvalidInput("reservation", "is already settled or released")
        return await self._guard._settle(self, record)

    async def release(self) -> None:
        """The request failed and costs nothing: the hold goes back.

        Does nothing once the reservation is settled or released, so it can sit
        in a `finally` after `settle`.
        """
        if self._done:
            return
        self._done = True
        lease = self._lease
        if lease is None:
            return
        with lease.lock:  # TenantLease.release_locally, inlined (the hot path)
            if not (lease.lean or lease.stepping):
                lease.free += self.estimate_usd
                return
        await self._guard._release(self)


class AsyncBudgetGuard:
    """Tenants' monthly budgets, enforced before the request.

    `reserve(tenant, estimate)` grants a hold of `estimate` or raises
    `BudgetExceeded` when this month's spend, plus what open reservations hold,
    plus the estimate would pass `tenant.budget_usd`; `Reservation.settle(record)`
    records the request's usage and releases the hold. The month is the calendar
    month in UTC by `clock`; `budget_usd` 0 is no limit. Across every process
    sharing the store, spend plus holds never pass the budget while requests
    settle within their estimates (see the README, "Budgets").

    `usage` is the usage repository settles record through (PostgreSQL: its pool
    also holds the leases; in memory: every guard over the same store shares its
    lease book). `tenants` is the tenant repository the guarded tenants come from.
    `lease_time` bounds how long a crashed process's shares stay held;
    `renew_interval` is how often a background worker renews leases, gives idle
    shares back and answers other processes' reclaims (None: no worker; call
    `renew()` yourself). A refused reservation waits up to `reclaim_wait`
    (default `lease_time`) for other processes' idle shares to come back.
    With `writer` (a usage writer over `usage`), settles go through it: the
    record is queued, and the hold stays until its batch commits (a duplicate
    or a vanished tenant then releases it); the alerts that settle crosses
    fire at the next renewal or `status`.
    Use it as an (async) context manager, or `close()` it: its leases go back.
    """

    __module__ = "tenantstore"

    def __init__(
        self,
        tenants: Any,
        usage: Any,
        *,
        clock: Clock | None = None,
        lease_time: float = 10.0,
        renew_interval: float | None = 1.0,
        reclaim_wait: float | None = None,
        writer: AsyncUsageWriter | None = None,
    ) -> None:
        if not lease_time > 0:
            raise InvalidInput("lease_time", "must be positive")
        if renew_interval is not None and not 0 < renew_interval < lease_time / 2:
            raise InvalidInput("renew_interval", "must be between 0 and lease_time/2")
        if reclaim_wait is not None and not reclaim_wait >= 0:
            raise InvalidInput("reclaim_wait", "must not be negative")
        self._tenants = tenants
        self._usage = usage
        self._clock = clock or SYSTEM_CLOCK
        self._monotonic = self._clock.monotonic
        memory = memory_usage(usage)
        self._book: _AsyncPostgresBook | _AsyncMemoryBook
        if memory is not None:
            self._book = _AsyncMemoryBook(memory)
        elif isinstance(usage, AsyncPostgresUsageRepository):
            self._book = _AsyncPostgresBook(usage)
        else:
            raise InvalidInput(
                "usage", "must be an in-memory or PostgreSQL usage repository"
            )
        self._usage_clock: Clock = getattr(usage, "_clock", None) or self._clock
        self._writer = writer
        self._holder = uuid.uuid4().hex
        self._lease_time = timedelta(seconds=lease_time)
        self._fresh_margin = timedelta(seconds=lease_time / 4)
        self._renew_ahead = timedelta(seconds=lease_time / 2)
        self._idle_after = lease_time
        self._renew_interval = renew_interval
        self._reclaim_wait = lease_time if reclaim_wait is None else reclaim_wait
        self._poll = (renew_interval or lease_time / 10) / 4
        # How long a refusal keeps asking the others to go lean: a few of their
        # renewals (it asks again each time it polls), else a whole lease.
        self._reclaim_window = timedelta(
            seconds=3 * renew_interval if renew_interval else lease_time
        )
        self._leases: dict[str, TenantLease] = {}
        self._step_locks: dict[str, ALock] = {}
        self._lock = Lock()
        self._callbacks: list[Callable[[BudgetAlert], object]] = []
        self._stop = AEvent()
        self._worker: AWorker | None = None
        self._closed = False
        self._refused = 0
        self._steps = 0
        self._settles = 0

    # -- the request path -----------------------------------------------------------

    async def reserve(self, tenant: Tenant, estimate: Decimal) -> AsyncReservation:
        """Hold `estimate` of `tenant`'s budget for one request, or raise
        `BudgetExceeded` (nothing held). `tenant` is the tenant as authenticated
        (its `budget_usd` decides; a changed budget is read from the store at
        once); `estimate` is validated as a cost (`InvalidInput` "estimate").
        """
        if type(tenant) is not Tenant:
            _check_tenant(tenant)
        amount = _ESTIMATES.get(estimate) if type(estimate) is Decimal else None
        if amount is None:
            amount = estimate_amount(estimate)
        budget = tenant.budget_usd
        if budget <= ZERO:
            return AsyncReservation(self, tenant.id, amount, _UNLIMITED)
        clock = self._clock
        lease = self._leases.get(tenant.id) or self._lease(tenant.id)
        # The hot path: from the held share, no I/O, no wall-clock read
        # (TenantLease.try_grant, inlined: a method call is a tenth of it).
        mono = self._monotonic()
        with lease.lock:
            if (
                mono < lease.open_until
                and amount <= lease.free
                and budget == lease.asked_budget
            ):
                lease.free -= amount
                lease.used = mono
                lease.local += 1
                return AsyncReservation(self, tenant.id, amount, lease)
        if self._closed:
            raise InvalidInput("guard", "is closed")
        self._start_worker()
        deadline = clock.monotonic() + self._reclaim_wait
        while True:
            async with self._step_lock(tenant.id):
                if lease.try_grant(amount, budget, clock.monotonic()):
                    return AsyncReservation(self, tenant.id, amount, lease)
                held = lease.held
                now = clock.now()
                decision = await self._step(lease, amount, budget, now, False)
            if decision.unlimited:
                return AsyncReservation(self, tenant.id, amount, _UNLIMITED)
            if decision.granted:
                return AsyncReservation(self, tenant.id, amount, lease)
            if decision.definitive or clock.monotonic() >= deadline:
                with self._lock:
                    self._refused += 1
                raise BudgetExceeded(
                    tenant.id,
                    decision.budget,
                    decision.spend,
                    held + decision.others,
                    amount,
                )
            # Another process keeps an idle share: it gives it back at its next
            # renewal (asked by `short`), or its lease expires. Ask again then.
            if await aevent_wait(self._stop, self._poll):
                raise InvalidInput("guard", "is closed")

    async def _settle(self, reservation: AsyncReservation, record: UsageRecord) -> bool:
        record = usage_for_write(record, utc(self._usage_clock.now()))
        if record.tenant_id != reservation.tenant_id:
            raise InvalidInput("record.tenant_id", "must be the reserved tenant's id")
        lease = reservation._lease
        estimate = reservation.estimate_usd
        if self._writer is not None:
            self._submit(self._writer, reservation, record)
            return True
        if lease is None:
            inserted: bool = await self._usage.record(record)
            reservation._done = True
            return inserted
        cost = record.cost_usd
        with lease.lock:
            booked = lease.lean or lease.stepping
        if booked:
            # Lean: the record and the lease change in one statement, so that
            # the others see exactly what this process still holds.
            inserted = await self._book.settle(
                self._usage, record, self._holder, max(cost, estimate), estimate
            )
        else:
            # A plain insert (as `usage.record`): no write to the lease row, so
            # this process's settles do not queue on it.
            inserted = await self._usage.record(record)
            self._book.note_trip()
        reservation._done = True
        with self._lock:
            self._settles += 1
        if not inserted:
            if booked:
                lease.returned(estimate)
            else:
                lease.released_unreturned(estimate)
            return False
        spend = lease.settled_one(cost, estimate, booked=booked)
        await self._alerts(lease, spend, lease.budget, self._clock.now())
        return True

    def _submit(
        self,
        writer: AsyncUsageWriter,
        reservation: AsyncReservation,
        record: UsageRecord,
    ) -> None:
        lease = reservation._lease
        if lease is None:
            writer.submit(record)
        else:
            # The hold stays in `held` until the batch commits: until then the
            # record is in no spend, and S + sum(H) still counts it once.
            cost, estimate = record.cost_usd, reservation.estimate_usd
            writer.submit(
                record,
                lambda outcome: self._written(lease, cost, estimate, outcome),
            )
        reservation._done = True  # a submit that raised leaves it open

    def _written(
        self,
        lease: TenantLease,
        cost: Decimal,
        estimate: Decimal,
        outcome: RecordOutcome,
    ) -> None:
        """A settle's record committed through the writer (in its flusher)."""
        if outcome is not RecordOutcome.INSERTED:
            # Recorded before, or its tenant is gone: the hold goes back here
            # (the book still counts it in this process's lease until the next
            # step: the others can only under-grant meanwhile).
            lease.released_unreturned(estimate)
            return
        # No I/O here: as a plain settle, the book's lease keeps counting it
        # (`consumed`) until the next step rebases it; a lean lease steps at
        # the next renewal, so that nothing stays stranded in it.
        lease.settled_one(cost, estimate, booked=False)
        with self._lock:
            self._settles += 1

    async def _release(self, reservation: AsyncReservation) -> None:
        lease = reservation._lease
        if lease is None:
            return
        estimate = reservation.estimate_usd
        # Lean (or a step is running): the hold goes back to the book, so that no
        # share stays idle here while another process is short.
        try:
            await self._book.adjust(lease.tenant_id, self._holder, -estimate)
        except TenantStoreError:
            _log.warning("budget: a released hold stays leased until renewal")
            lease.released_unreturned(estimate)
            return
        lease.returned(estimate)

    # -- reading --------------------------------------------------------------------

    async def status(self, tenant: Tenant) -> BudgetStatus:
        """This month's budget, spend and holds for `tenant`, read from the store
        (`TenantNotFound` if it is gone)."""
        _check_tenant(tenant)
        now = self._clock.now()
        start, end = month_of(now)
        snap = await self._book.snapshot(
            tenant.id, self._holder, start, now, now - self._reclaim_window
        )
        if snap.budget is None:
            raise TenantNotFound("no such tenant")
        with self._lock:
            lease = self._leases.get(tenant.id)
        held = (ZERO if lease is None else lease.held) + snap.others
        budget, spent = snap.budget, snap.spend
        if budget > 0:
            if lease is not None and lease.period == start.date():
                await self._alerts(lease, spent, budget, now)
            else:
                levels = list(crossed(spent, budget))
                await self._fire(tenant.id, levels, budget, spent, start, now)
        return BudgetStatus(
            budget_usd=budget,
            spent_usd=spent,
            held_usd=held,
            remaining_usd=None if budget <= 0 else max(ZERO, budget - spent - held),
            period_start=start,
            period_end=end,
            level=level_of(spent, budget),
        )

    def stats(self) -> BudgetStats:
        """Counters since the guard was made (see `BudgetStats`)."""
        with self._lock:
            leases = list(self._leases.values())
            refused, steps, settles = self._refused, self._steps, self._settles
        granted = sum(lease.granted for lease in leases)
        local = sum(lease.local for lease in leases)
        return BudgetStats(
            reserved=granted,
            reserved_locally=local,
            refused=refused,
            lease_steps=steps,
            settled=settles,
            round_trips=self._book.trips,
        )

    def on_threshold(self, callback: Callable[[BudgetAlert], object]) -> None:
        """Call `callback(alert)` when a tenant's spend this month reaches 80 %
        ("warning"), 95 % ("critical") or 100 % ("exceeded") of its budget: once
        per tenant, month and level across every process sharing the store (the
        first to see it fires it), in the thread (task) that saw it. An exception
        it raises is logged, never raised to the request."""
        with self._lock:
            self._callbacks.append(callback)

    # -- leases ---------------------------------------------------------------------

    async def renew(self) -> None:
        """Renew the leases due, give idle shares back, answer reclaims.

        The background worker calls this every `renew_interval`.
        """
        clock = self._clock
        now = clock.now()
        start = month_of(now)[0]
        mono = clock.monotonic()
        with self._lock:
            active = [
                lease
                for lease in self._leases.values()
                if lease.expires is not None and (lease.lease != 0 or lease.held != 0)
            ]
        if not active:
            return
        since = now - self._reclaim_window
        wanted = await self._book.reclaims(
            [lease.tenant_id for lease in active], self._holder, now, since
        )
        for lease in active:
            with lease.lock:
                known = lease.spend + lease.settled
                # Settled through the writer while lean: the book still counts it.
                rebase = lease.lean and lease.consumed > 0
            if lease.period == start.date():
                await self._alerts(lease, known, lease.budget, now)
            idle = lease.held == 0 and mono - lease.used >= self._idle_after
            expires = lease.expires
            due = (
                rebase
                or expires is None
                or expires - now <= self._renew_ahead
                or lease.period != start.date()
            )
            if not (idle or due or (lease.tenant_id in wanted and not lease.lean)):
                continue
            asked = lease.asked_budget
            if asked is None:
                continue
            try:
                async with self._step_lock(lease.tenant_id):
                    await self._step(lease, ZERO, asked, now, idle)
            except TenantNotFound:
                with self._lock:
                    self._leases.pop(lease.tenant_id, None)

    async def _step(
        self,
        lease: TenantLease,
        estimate: Decimal,
        asked: Decimal,
        now: datetime,
        idle: bool,
    ) -> Decision:
        """One lease step; the caller holds the tenant's step lock."""
        start, end = month_of(now)
        mono = self._clock.monotonic()
        # Local grants stop a margin before the lease expires (so a renewal
        # that is late never lets two processes count one share), and at the
        # month's end (the next month needs a step of its own).
        fresh_until = mono + min(
            (self._lease_time - self._fresh_margin).total_seconds(),
            (end - now).total_seconds(),
        )
        held, lease_read, consumed_read = lease.begin_step(start.date())
        if estimate > 0:
            lease.typical = estimate
        typical = lease.typical
        expires = now + self._lease_time
        with self._lock:
            self._steps += 1
        decision: Decision | None = None
        try:
            decision = await self._book.step(
                lease.tenant_id,
                self._holder,
                start,
                now,
                now - self._reclaim_window,
                expires,
                lease_read,
                lambda snap: plan(snap, held, estimate, idle=idle, typical=typical),
            )
        finally:
            lease.end_step(
                decision,
                lease_read,
                consumed_read,
                estimate,
                asked,
                expires,
                fresh_until,
                mono,
            )
        assert decision is not None
        if not decision.unlimited:
            await self._alerts(lease, decision.spend, decision.budget, now)
        return decision

    async def _alerts(
        self, lease: TenantLease, spend: Decimal, budget: Decimal, now: datetime
    ) -> None:
        levels = lease.unfired(spend, budget)
        if not levels:
            return
        period = lease.period
        assert period is not None
        start = datetime(period.year, period.month, 1, tzinfo=UTC)
        if await self._fire(lease.tenant_id, list(levels), budget, spend, start, now):
            lease.mark_fired(levels)

    async def _fire(
        self,
        tenant_id: str,
        levels: list[AlertLevel],
        budget: Decimal,
        spend: Decimal,
        start: datetime,
        now: datetime,
    ) -> bool:
        """Fire the levels no process has fired yet; False if the store failed."""
        if not levels:
            return True
        try:
            new = await self._book.fire(tenant_id, start.date(), levels, now)
        except TenantStoreError:
            _log.warning("budget: alerts not recorded, retried at the next check")
            return False
        with self._lock:
            callbacks = list(self._callbacks)
        for level in new:
            alert = BudgetAlert(
                tenant_id=tenant_id,
                level=level,
                budget_usd=budget,
                spent_usd=spend,
                period_start=start,
                timestamp=now,
            )
            for callback in callbacks:
                try:
                    callback(alert)
                except Exception:
                    _log.exception("budget: an on_threshold callback failed")
        return True

    def _lease(self, tenant_id: str) -> TenantLease:
        lease = self._leases.get(tenant_id)
        if lease is None:
            with self._lock:
                lease = self._leases.get(tenant_id)
                if lease is None:
                    lease = self._leases[tenant_id] = TenantLease(tenant_id)
        return lease

    def _step_lock(self, tenant_id: str) -> ALock:
        lock = self._step_locks.get(tenant_id)
        if lock is None:
            with self._lock:
                lock = self._step_locks.setdefault(tenant_id, ALock())
        return lock

    def _start_worker(self) -> None:
        if self._worker is not None or self._renew_interval is None:
            return
        with self._lock:
            if self._worker is None and not self._closed:
                self._worker = aspawn(self._run, "tenantstore-budget-renewal")

    async def _run(self) -> None:
        interval = self._renew_interval
        while not await aevent_wait(self._stop, interval):
            try:
                await self.renew()
            except TenantStoreError:
                _log.warning("budget: lease renewal failed, retrying")

    # -- lifetime -------------------------------------------------------------------

    async def close(self) -> None:
        """Stop renewing and give every lease back (open reservations keep no
        share: settle or release them first); `reserve` raises `InvalidInput`
        afterwards. With a `writer`, it is flushed first (for up to
        `lease_time`; if that fails the leases are left to expire)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
        self._stop.set()
        if worker is not None:
            await astop_worker(worker)
        with self._lock:
            leases = list(self._leases.values())
        held = []
        for lease in leases:
            with lease.lock:
                # No more grants from a share that is about to go back; any
                # reservation after close() raises.
                lease.open_until = _CLOSED
                if lease.expires is not None:
                    held.append(lease.tenant_id)
        if held and self._writer is not None:
            # Settles queued in the writer are in no spend yet: their holds
            # must stay leased until they are written.
            try:
                await self._writer.flush(self._lease_time.total_seconds())
            except TenantStoreError:
                _log.warning(
                    "budget: settles still queued in the usage writer; "
                    "leases not returned, they expire on their own"
                )
                return
        if held:
            try:
                await self._book.drop(held, self._holder)
            except TenantStoreError:
                _log.warning("budget: leases not returned; they expire on their own")

    async def __aenter__(self) -> AsyncBudgetGuard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
