"""Budget bookkeeping without I/O, shared by `BudgetGuard` and `AsyncBudgetGuard`.

What lives here: the month rule and the alert levels, the public value types
(`BudgetStatus`, `BudgetAlert`, `BudgetStats`), one process's view of a tenant's lease
(`TenantLease`: what it may grant, what it holds), the lease step's arithmetic
(`plan`), and the in-memory lease book that gives the in-memory backend the same
answers as PostgreSQL. The PostgreSQL lease book and the guards are in
`_async/budget.py` (and its generated twin).

The invariant, per tenant and month, with S the month's spend, L_p the lease of
process p in the book, C_p what p's settles consumed since its last lease step
(kept in p's memory: the book's L_p still counts it) and H_p what p's open
reservations hold; E_p = L_p - C_p is p's effective lease:

    (1) a lease step of p reads S and every other L_q in one snapshot and sets
        L_p so that S + sum(L) <= budget; since L_q >= E_q, S + sum(E) <= budget
    (2) a settle adds its cost c to S and max(c, estimate) to C_p (or takes it
        from L_p in the book, in the same statement, while p is lean): S + sum(E)
        does not grow; the others, reading L_p, only under-grant
    (3) p grants only from E_p - H_p: H_p <= E_p, except by what p's settles
        cost beyond their estimates

so S + sum(H) <= budget while every settle is within its estimate. A lease step
counts only live leases (not expired by the guards' clock) and runs under a
per-tenant lock that orders lease steps.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Final, Literal

from ._memory import AsyncInMemoryUsageRepository, InMemoryUsageRepository
from ._models import UsageRecord
from ._validation import COST_MAX, money
from .errors import TenantNotFound

__all__ = [
    "LEVELS",
    "AlertLevel",
    "BudgetAlert",
    "BudgetStats",
    "BudgetStatus",
    "Decision",
    "MemoryBook",
    "Snapshot",
    "TenantLease",
    "crossed",
    "level_of",
    "memory_book",
    "memory_usage",
    "month_of",
    "plan",
]

AlertLevel = Literal["warning", "critical", "exceeded"]

# The Go service's thresholds (internal/budget: 0.8 and 0.95), and 100 %.
LEVELS: Final[tuple[tuple[AlertLevel, Decimal], ...]] = (
    ("warning", Decimal("0.80")),
    ("critical", Decimal("0.95")),
    ("exceeded", Decimal("1")),
)
ZERO: Final = Decimal("0")
_CLOSED: Final = float("-inf")
_STEP: Final = Decimal("1E-10")  # cost precision: leases are amounts of cost


def estimate_amount(value: object) -> Decimal:
    """A reservation's estimate, validated as a cost (`InvalidInput` names it)."""
    # On the hot path: a plain Decimal in range needs only its rounding (a
    # quarter of `money`'s cost); everything else takes the full check.
    if type(value) is Decimal:
        known = _ESTIMATES.get(value)
        if known is not None:
            return known
        if value.is_finite() and ZERO < value <= COST_MAX:
            amount = value.quantize(_STEP, rounding=ROUND_HALF_EVEN)
            if len(_ESTIMATES) >= 4096:  # many distinct estimates: start over
                _ESTIMATES.clear()
            _ESTIMATES[value] = amount
            return amount
    return money("estimate", value, _STEP, COST_MAX)


# Estimates seen, validated: a gateway's estimates repeat (per model, per size
# class), and a dict lookup costs a fifth of the rounding. Equal Decimals hash
# alike, and a key's quantized value is the same for all of them.
_ESTIMATES: dict[Decimal, Decimal] = {}


def month_of(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month in UTC that contains `now`: [start, end)."""
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def crossed(spend: Decimal, budget: Decimal) -> tuple[AlertLevel, ...]:
    """Every level that `spend` has reached, lowest first (none without a limit)."""
    if budget <= 0:
        return ()
    return tuple(level for level, share in LEVELS if spend >= budget * share)


def level_of(spend: Decimal, budget: Decimal) -> AlertLevel | None:
    levels = crossed(spend, budget)
    return levels[-1] if levels else None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStatus:
    """A tenant's budget this month, as one process sees it.

    `spent_usd` is every usage record of the month, whoever wrote it;
    `held_usd` what open reservations hold: this process's own, plus the shares
    other processes have leased (an upper bound of what theirs hold).
    `remaining_usd` is what may still be reserved (None: `budget_usd` is 0, no
    limit). `level` is the highest alert level reached, or None.
    """

    __module__ = "tenantstore"

    budget_usd: Decimal
    spent_usd: Decimal
    held_usd: Decimal
    remaining_usd: Decimal | None
    period_start: datetime
    period_end: datetime
    level: AlertLevel | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BudgetAlert:
    """A tenant's spend reached a level this month ("warning" at 80 %,
    "critical" at 95 %, "exceeded" at 100 % of `budget_usd`), as `spent_usd` read
    when the level was first seen; fired once per tenant, month and level across
    every process sharing the store."""

    __module__ = "tenantstore"

    tenant_id: str
    level: AlertLevel
    budget_usd: Decimal
    spent_usd: Decimal
    period_start: datetime
    timestamp: datetime


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStats:
    """What a guard did since it was made: reservations granted on limited
    budgets (`reserved`; `reserved_locally` of them from the held share, without
    I/O), `refused`, `lease_steps` (transactions taking or renewing a share),
    `settled`, and `round_trips` to the database (0 in memory)."""

    __module__ = "tenantstore"

    reserved: int
    reserved_locally: int
    refused: int
    lease_steps: int
    settled: int
    round_trips: int


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What a lease step reads at once: the tenant's budget (None: no tenant), the
    month's spend, and the other holders' live leases (count, sum of their
    positive amounts, whether all are lean, whether one asked for a reclaim)."""

    budget: Decimal | None
    spend: Decimal
    others: Decimal
    others_count: int
    others_lean: bool
    reclaim: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What a lease step writes and answers.

    `target` is this holder's new lease; `granted` whether `estimate` fits;
    `definitive` whether a refusal is final (no other holder keeps an idle
    share that a reclaim could bring back); `short` asks the others to go lean.
    """

    budget: Decimal
    spend: Decimal
    others: Decimal
    target: Decimal
    granted: bool
    unlimited: bool
    lean: bool
    short: bool
    definitive: bool


# A share covers this many reservations of the typical estimate, at most: enough
# that lease steps are rare (one per SHARE_RESERVATIONS reservations per process),
# little enough that idle shares strand little of a budget that is running out.
SHARE_RESERVATIONS: Final = 16


def _share(available: Decimal, others_count: int, typical: Decimal) -> Decimal:
    """The idle share a lease step takes on top of what it needs.

    At most SHARE_RESERVATIONS typical estimates, and at most half of what is
    free split among the holders that have a lease: the shares shrink as the
    remaining budget does, and a newcomer always finds some left.
    """
    if available <= 0:
        return ZERO
    half = available / (2 * (others_count + 1))
    return min(half, typical * SHARE_RESERVATIONS).quantize(_STEP, rounding=ROUND_DOWN)


def plan(
    snap: Snapshot,
    held: Decimal,
    estimate: Decimal,
    *,
    idle: bool,
    typical: Decimal,
) -> Decision:
    """The lease step's arithmetic: the new lease, and whether `estimate` fits.

    `held` is what this holder's reservations hold, read before the snapshot (a
    reservation settled meanwhile is then counted twice, never not at all).
    `estimate` 0 renews without reserving; `idle` gives the share back;
    `typical` is the estimate the share is sized by (the last one reserved).
    """
    if snap.budget is None:
        raise TenantNotFound("no such tenant")
    budget = snap.budget
    if budget <= 0:
        return Decision(
            budget, snap.spend, snap.others, ZERO, True, True, False, False, False
        )
    free = budget - snap.spend - snap.others
    need = held + estimate
    # Spend at or past the budget refuses even an estimate of 0, as the Go
    # service's IsBudgetExceeded does (spend >= budget).
    fits = need <= free and snap.spend < budget
    lean = snap.reclaim or not fits or idle
    if fits:
        extra = _share(free - need, snap.others_count, typical)
        target = need if lean else need + extra
        granted = True
    else:
        # Refused: the lease stays what this holder's reservations hold, even past
        # `free`. The others trust the book to count every hold; a lease cut to
        # `free` would leave a reservation settled meanwhile (in `spend` and in
        # `held` at once) counted in neither once its settle lowers the lease.
        target = held
        granted = False
    reserving = estimate > 0 or not idle
    definitive = snap.others_count == 0 or snap.others_lean
    return Decision(
        budget,
        snap.spend,
        snap.others,
        target,
        granted,
        False,
        lean,
        not granted and reserving and not definitive,
        definitive,
    )


class TenantLease:
    """One process's lease on one tenant's month, and what it holds.

    `lease` mirrors this holder's `amount` in the book: every change to one is
    the same delta applied to the other (settles commute with lease steps).
    A settle lowers it in the book only while lean (when the others must see
    exactly what this process holds); otherwise the settle is a plain usage
    insert, and `consumed` keeps what it used until the next step rebases the
    lease.
    Reservations are granted from `lease - held` without I/O while the lease is
    fresh, not lean and no lease step is running; `stepping` blocks that during
    a step, so that `held` only falls while the step computes the new lease.
    """

    __slots__ = (
        "asked_budget",
        "budget",
        "consumed",
        "expires",
        "fired",
        "free",
        "fresh_until",
        "lean",
        "lease",
        "local",
        "lock",
        "open_until",
        "period",
        "settled",
        "spend",
        "stepped",
        "stepping",
        "tenant_id",
        "typical",
        "used",
    )

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.lock = threading.Lock()
        self.period: date | None = None
        self.budget = ZERO  # budget_usd the store had at the last step
        self.asked_budget: Decimal | None = None  # the caller's, at that step
        self.lease = ZERO
        self.expires: datetime | None = None
        self.lean = False
        self.stepping = False
        self.spend = ZERO  # the month's spend read at the last step
        self.settled = ZERO  # what this process settled since
        self.fired: set[str] = set()  # levels known fired this period
        self.used = 0.0  # monotonic time of the last reservation
        self.typical = ZERO  # the estimate of the last reservation that stepped
        self.local = 0  # reservations granted without I/O
        self.stepped = 0  # and by a lease step
        self.free = ZERO  # lease - held - consumed: what may still be granted
        self.consumed = ZERO  # settled since the last step, still in the book's lease
        self.fresh_until = _CLOSED  # monotonic: local grants stop by then
        self.open_until = _CLOSED  # fresh_until, or -inf while grants are closed

    def try_grant(self, estimate: Decimal, budget: Decimal, mono: float) -> bool:
        """Grant from the held share, without I/O, if it safely can.

        The hot path: `open_until` (monotonic) is the end of the lease's safe
        time and of the month, or -inf while a step runs, while lean, and once
        the month's known spend has reached the budget; `budget` is the caller's
        `budget_usd`, which must be the one the last step saw.
        """
        with self.lock:
            if mono >= self.open_until or estimate > self.free:
                return False
            if budget != self.asked_budget:
                return False
            self.free -= estimate
            self.used = mono
            self.local += 1
            return True

    def begin_step(self, period: date) -> tuple[Decimal, Decimal, Decimal]:
        """Block local grants; return (held, lease, consumed) for the step."""
        with self.lock:
            self.stepping = True
            self.open_until = _CLOSED
            if self.period != period:
                # A new month: nothing is known fired yet, nothing settled in it.
                self.period = period
                self.fired = set()
                self.spend = ZERO
                self.settled = ZERO
            return self.lease - self.free - self.consumed, self.lease, self.consumed

    def end_step(
        self,
        decision: Decision | None,
        lease_read: Decimal,
        consumed_read: Decimal,
        estimate: Decimal,
        asked: Decimal,
        expires: datetime,
        fresh_until: float,
        mono: float,
    ) -> None:
        """Apply a committed step (None: it failed, nothing changed).

        `fresh_until` (monotonic) is when local grants must stop: a margin
        before the lease expires, and no later than the month's end.
        """
        with self.lock:
            self.stepping = False
            if decision is None:
                self._reopen()
                return
            held = self.lease - self.free - self.consumed
            self.lease += decision.target - lease_read
            # What was consumed before `held` was read is in the snapshot's spend
            # (applied here only after its commit) and out of `held`: the new
            # lease no longer carries it. What came after may be in neither.
            self.consumed -= consumed_read
            if decision.granted and not decision.unlimited:
                held += estimate
                self.used = mono
                self.stepped += 1
            self.free = self.lease - held - self.consumed
            self.lean = decision.lean
            self.budget = decision.budget
            self.asked_budget = asked
            self.spend = decision.spend
            self.settled = ZERO
            self.expires = expires
            self.fresh_until = fresh_until
            self._reopen()

    def _reopen(self) -> None:
        # Under self.lock: recompute what the hot path reads.
        closed = (
            self.stepping
            or self.lean
            or self.expires is None
            or self.spend + self.settled >= self.budget
        )
        self.open_until = _CLOSED if closed else self.fresh_until

    @property
    def granted(self) -> int:
        return self.local + self.stepped

    @property
    def held(self) -> Decimal:
        """What this process's open reservations hold."""
        with self.lock:
            return self.lease - self.free - self.consumed

    def release_locally(self, estimate: Decimal) -> bool:
        """Release a hold without I/O if the lease may keep the freed share."""
        with self.lock:
            if self.lean or self.stepping:
                return False
            self.free += estimate
            return True

    def returned(self, estimate: Decimal) -> None:
        """A hold went back to the book (a release while lean, a duplicate)."""
        with self.lock:
            self.lease -= estimate  # and the hold: `free` stays

    def released_unreturned(self, estimate: Decimal) -> None:
        """A hold ends but its share stays leased (the book could not be told)."""
        with self.lock:
            self.free += estimate

    def settled_one(self, cost: Decimal, estimate: Decimal, *, booked: bool) -> Decimal:
        """A settle committed: apply it; return the month's spend as now known.

        `booked`: the settle lowered the lease in the book too (while lean); else
        the lease in the book still counts it, and `consumed` remembers that
        until the next step (the book over-counts this process meanwhile: safe).
        """
        with self.lock:
            spent = max(cost, estimate)
            if booked:
                self.lease -= spent
            else:
                self.consumed += spent
            self.free -= spent - estimate
            self.settled += cost
            known = self.spend + self.settled
            if known >= self.budget:
                self.open_until = _CLOSED
            return known

    def unfired(self, spend: Decimal, budget: Decimal) -> list[AlertLevel]:
        with self.lock:
            return [lv for lv in crossed(spend, budget) if lv not in self.fired]

    def mark_fired(self, levels: list[AlertLevel]) -> None:
        with self.lock:
            self.fired.update(levels)


# -- the in-memory lease book ------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Row:
    period: date
    amount: Decimal
    lean: bool
    short_at: datetime | None
    expires: datetime


class MemoryBook:
    """Leases and fired alerts of one in-memory store, as the database keeps them.

    Every guard over the same `InMemoryUsageRepository` shares this book, so
    several guards in one process behave as several processes on one database.
    """

    def __init__(self, usage: InMemoryUsageRepository) -> None:
        self.usage = usage
        self.lock = threading.Lock()
        self.rows: dict[tuple[str, str], _Row] = {}
        self.alerts: set[tuple[str, date, str]] = set()

    def _budget(self, tenant_id: str) -> Decimal | None:
        tenant = self.usage._state.tenants.get(tenant_id)
        return None if tenant is None else tenant.budget_usd

    def _snapshot(
        self, tenant_id: str, holder: str, period: date, now: datetime, since: datetime
    ) -> Snapshot:
        others = [
            row
            for (tid, h), row in self.rows.items()
            if tid == tenant_id and h != holder and row.period == period
            if row.expires > now
        ]
        start = datetime(period.year, period.month, 1, tzinfo=UTC)
        return Snapshot(
            self._budget(tenant_id),
            self.usage.get_tenant_total_cost(tenant_id, start),
            sum((max(r.amount, ZERO) for r in others), ZERO),
            len(others),
            all(r.lean for r in others),
            any(r.short_at is not None and r.short_at > since for r in others),
        )

    def step(
        self,
        tenant_id: str,
        holder: str,
        period: date,
        now: datetime,
        since: datetime,
        expires: datetime,
        lease_read: Decimal,
        planner: Callable[[Snapshot], Decision],
    ) -> Decision:
        with self.lock:
            for key in [
                k
                for k, r in self.rows.items()
                if k[0] == tenant_id
                and k[1] != holder
                and (r.expires <= now or r.period != period)
            ]:
                del self.rows[key]
            decision = planner(self._snapshot(tenant_id, holder, period, now, since))
            row = self.rows.get((tenant_id, holder))
            if row is None:
                row = self.rows[tenant_id, holder] = _Row(
                    period, decision.target, decision.lean, None, expires
                )
            else:
                row.amount += decision.target - lease_read
                row.period, row.lean, row.expires = period, decision.lean, expires
            if decision.short:
                row.short_at = now
            return decision

    def snapshot(
        self, tenant_id: str, holder: str, period: date, now: datetime, since: datetime
    ) -> Snapshot:
        with self.lock:
            return self._snapshot(tenant_id, holder, period, now, since)

    def settle(
        self,
        usage: InMemoryUsageRepository,
        record: UsageRecord,
        holder: str,
        spent: Decimal,
        unspent: Decimal,
    ) -> bool:
        with self.lock:
            inserted = usage.record(record)
            row = self.rows.get((record.tenant_id, holder))
            if row is not None:
                row.amount -= spent if inserted else unspent
            return inserted

    def adjust(self, tenant_id: str, holder: str, delta: Decimal) -> None:
        with self.lock:
            row = self.rows.get((tenant_id, holder))
            if row is not None:
                row.amount += delta

    def reclaims(
        self, tenant_ids: list[str], holder: str, now: datetime, since: datetime
    ) -> set[str]:
        wanted = set(tenant_ids)
        with self.lock:
            return {
                tid
                for (tid, h), r in self.rows.items()
                if tid in wanted and h != holder and r.expires > now
                if r.short_at is not None and r.short_at > since
            }

    def fire(
        self, tenant_id: str, period: date, levels: list[AlertLevel]
    ) -> list[AlertLevel]:
        with self.lock:
            if tenant_id not in self.usage._state.tenants:
                return []
            new = [lv for lv in levels if (tenant_id, period, lv) not in self.alerts]
            self.alerts.update((tenant_id, period, lv) for lv in new)
            return new

    def drop(self, tenant_ids: list[str], holder: str) -> None:
        with self.lock:
            for tid in tenant_ids:
                self.rows.pop((tid, holder), None)


_BOOKS: weakref.WeakKeyDictionary[object, MemoryBook] = weakref.WeakKeyDictionary()
_BOOKS_LOCK = threading.Lock()


def memory_usage(usage: object) -> InMemoryUsageRepository | None:
    """The sync in-memory repository behind `usage`, or None if it is not one."""
    if isinstance(usage, AsyncInMemoryUsageRepository):
        usage = usage.sync
    return usage if isinstance(usage, InMemoryUsageRepository) else None


def memory_book(usage: InMemoryUsageRepository) -> MemoryBook:
    """The lease book of the store `usage` keeps its records in."""
    # Keyed by the store's lock: the store's state has slots and no weak
    # references, its lock has both, lives exactly as long, and is one per store.
    key = usage._state.lock
    with _BOOKS_LOCK:
        book = _BOOKS.get(key)
        if book is None:
            book = _BOOKS[key] = MemoryBook(usage)
        return book
