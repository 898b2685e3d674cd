"""The budget guard's statements (migration 014's tables), composed once at import.

Apart from `_sql` because they are one concern: the lease step, the settle, the
alerts. The month's spend is `_sql`'s own total-cost statement, embedded as a scalar
subquery, so that the spend a guard counts is exactly what `get_tenant_total_cost`
returns, however the totals are kept. The settle embeds `_sql.INSERT_USAGE` in a
data-modifying WITH (PyPika composes neither construct): one statement, so one
round trip, inserts the record and lowers the lease atomically.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from pypika import Parameter, PostgreSQLQuery, Table
from pypika import functions as fn
from pypika.terms import LiteralValue

from . import _sql

__all__ = ["snapshot"]

leases: Any = Table("budget_leases")
alerts: Any = Table("budget_alerts")
tenants: Any = Table("tenants")
Query: Any = PostgreSQLQuery
_fn: Any = fn


def _p(name: str) -> Any:
    return Parameter(f"%({name})s")


# Lease steps of one tenant run one at a time, in every process: the two-key form
# of the advisory lock (its own key space, apart from golang-migrate's and the
# migration runner's one-key lock), class 0x7462 ("tb"), key hashtext(tenant id).
LOCK_TENANT: Final[str] = (
    "SELECT pg_advisory_xact_lock(29794, hashtext(%(lock_key)s::text))"
)

# Leases that expired (their holder stopped renewing: crashed, or cut off) or
# belong to another month go, so they count for nothing.
DELETE_DEAD: Final[str] = str(
    Query.from_(leases)
    .delete()
    .where(leases.tenant_id == _p("tenant_id"))
    .where(leases.holder != _p("holder"))
    .where((leases.expires_at <= _p("now")) | (leases.period != _p("period")))
    .get_sql()
)

_others = (
    Query.from_(leases)
    .where(leases.tenant_id == _p("tenant_id"))
    .where(leases.holder != _p("holder"))
    .where(leases.period == _p("period"))
    .where(leases.expires_at > _p("now"))
)
_budget = (
    Query.from_(tenants)
    .select(_fn.Coalesce(tenants.budget_usd, LiteralValue("0.00")))
    .where(tenants.id == _p("tenant_id"))
)


@functools.cache
def snapshot(spend: str) -> str:
    """One statement, so one snapshot: the budget, the month's spend and the other
    holders' live leases.

    `spend` is the statement `get_tenant_total_cost` runs for the month's start
    (`postgres._total_cost_query`), embedded as it is, so that a guard counts what
    that method returns, however the totals are kept. Composed once per statement.
    A settle commits its record and its lease change together, so a snapshot sees
    both or neither.
    """
    return str(
        _others.select(
            _budget,
            LiteralValue(f"({spend})"),
            LiteralValue('COALESCE(SUM(GREATEST("amount", 0)), 0)'),
            _fn.Count("*"),
            LiteralValue('COALESCE(BOOL_AND("lean"), true)'),
            LiteralValue('COALESCE(BOOL_OR("short_at" > %(reclaim_since)s), false)'),
        ).get_sql()
    )


snapshot(_sql.SELECT_TOTAL_COST_BY_DAYS)  # composed at import, as the rest

_COLUMNS = ("tenant_id", "holder", "period", "amount", "lean", "short_at", "expires_at")
# This holder's lease: `target` when it has no row, else moved by `delta` (target
# minus the amount this process last knew), so that settles committed meanwhile,
# which moved both copies by their own deltas, are not overwritten.
WRITE_LEASE: Final[str] = str(
    Query.into(leases)
    .columns(*_COLUMNS)
    .insert(
        _p("tenant_id"),
        _p("holder"),
        _p("period"),
        _p("target"),
        _p("lean"),
        _p("short_at"),
        _p("expires"),
    )
    .on_conflict(leases.tenant_id, leases.holder)
    .do_update(leases.amount, leases.amount + _p("delta"))
    .do_update(leases.period, LiteralValue('EXCLUDED."period"'))
    .do_update(leases.lean, LiteralValue('EXCLUDED."lean"'))
    .do_update(
        leases.short_at,
        _fn.Coalesce(LiteralValue('EXCLUDED."short_at"'), leases.short_at),
    )
    .do_update(leases.expires_at, LiteralValue('EXCLUDED."expires_at"'))
    .get_sql()
)

# The record, and the lease lowered by `spent` (inserted) or `unspent` (a
# duplicate: the hold goes back). Answers 1 when the record was inserted.
SETTLE: Final[str] = (
    f"WITH ins AS ({_sql.INSERT_USAGE} RETURNING 1), "
    'upd AS (UPDATE "budget_leases" SET "amount" = "amount" - CASE WHEN '
    "EXISTS (SELECT FROM ins) THEN %(spent)s::numeric ELSE %(unspent)s::numeric END "
    'WHERE "tenant_id" = %(tenant_id)s AND "holder" = %(holder)s RETURNING 1) '
    "SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd)"
)

ADJUST_LEASE: Final[str] = str(
    Query.update(leases)
    .set(leases.amount, leases.amount + _p("delta"))
    .where(leases.tenant_id == _p("tenant_id"))
    .where(leases.holder == _p("holder"))
    .get_sql()
)

# Tenants (of those given) for which another live holder asked for a reclaim.
RECLAIMS: Final[str] = str(
    Query.from_(leases)
    .select(_fn.Cast(leases.tenant_id, "text"))
    .distinct()
    .where(leases.tenant_id == LiteralValue("ANY(%(tenant_ids)s::uuid[])"))
    .where(leases.holder != _p("holder"))
    .where(leases.expires_at > _p("now"))
    .where(leases.short_at > _p("reclaim_since"))
    .get_sql()
)

# Fired once per (tenant, month, level) across every process: the inserted levels
# come back; levels another process fired first do not.
FIRE_ALERTS: Final[str] = (
    'INSERT INTO "budget_alerts" ("tenant_id", "period", "level", "fired_at") '
    'SELECT "id", %(period)s, "level", %(now)s FROM "tenants", '
    'UNNEST(%(levels)s::text[]) AS "level" WHERE "id" = %(tenant_id)s '
    'ON CONFLICT DO NOTHING RETURNING "level"'
)

DROP_LEASES: Final[str] = str(
    Query.from_(leases)
    .delete()
    .where(leases.holder == _p("holder"))
    .where(leases.tenant_id == LiteralValue("ANY(%(tenant_ids)s::uuid[])"))
    .get_sql()
)
