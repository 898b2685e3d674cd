"""Usage operations on PostgreSQL against hand-written psycopg through the same pool.

`record` inserts fresh rows for a tenant of their own (ours and the floor take turns
on the same table and indexes); the reads run on tenants loaded with a fixed grid of
rows, so every answer is known in advance and checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from benchmarks.data import UsageTenant
from benchmarks.measure import CheckFailed, Target, Variant, per_call
from benchmarks.scenario import Context, Scenario, cycle, require_params
from tenantstore import PostgresUsageRepository, UsageRecord, _sql, create_pool

__all__ = ["SCENARIOS"]

FLOOR_LABEL = "hand-written psycopg, same pool"
RECORD_TARGET = Target(1.10, "≤ 1.10x")


def _records(tenant_id: str, prefix: str) -> Callable[[int], UsageRecord]:
    def make(i: int) -> UsageRecord:
        return UsageRecord(
            tenant_id=tenant_id,
            request_id=f"{prefix}-{i:09d}",
            model="gpt-4o-mini",
            provider="openai",
            input_tokens=1200,
            output_tokens=350,
            cost_usd=Decimal("0.0003930000"),
            cached=False,
            latency_ms=840,
        )

    return make


def _params(r: UsageRecord) -> dict[str, Any]:
    """What a hand-written INSERT passes: the record's fields, stamped now."""
    return {
        "tenant_id": r.tenant_id,
        "request_id": r.request_id,
        "model": r.model,
        "provider": r.provider,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "cost_usd": r.cost_usd,
        "cached": r.cached,
        "latency_ms": r.latency_ms,
        "status": r.status,
        "created_at": datetime.now(UTC),
    }


def _check_inserted(_: UsageRecord, result: Any) -> None:
    if result is not True and result != 1:
        raise CheckFailed(f"the record was not inserted ({result!r})")


@contextlib.contextmanager
def record(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    require_params(
        _sql.INSERT_USAGE, _params(_records(lookup.recorder_id, "x")(0)), "record"
    )
    with create_pool(lookup.url) as pool:
        repo = PostgresUsageRepository(pool)

        def floor(r: UsageRecord) -> int:
            with pool.connection() as conn:
                cur = conn.execute(_sql.INSERT_USAGE, _params(r), prepare=True)
                return cur.rowcount

        yield [
            Variant(
                "PostgresUsageRepository.record",
                "ours",
                per_call(
                    repo.record, _records(lookup.recorder_id, "ours"), _check_inserted
                ),
                note="validates, stamps the time",
            ),
            Variant(
                FLOOR_LABEL + " INSERT",
                "floor",
                per_call(floor, _records(lookup.recorder_id, "hand"), _check_inserted),
                target=RECORD_TARGET,
            ),
        ]


@contextlib.contextmanager
def usage(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    owner = lookup.usage[ctx.sizes.cost_rows[0]]
    expected = owner.request_ids_desc
    params = {"tenant_id": owner.id, "since": owner.since_all}

    def check_records(_: object, result: list[UsageRecord]) -> None:
        if [r.request_id for r in result] != expected:
            raise CheckFailed("get_tenant_usage returned other records or order")

    def check_rows(_: object, rows: list[Any]) -> None:
        if [r[0] for r in rows] != expected:
            raise CheckFailed("the hand-written SELECT returned other rows")

    with create_pool(lookup.url) as pool:
        repo = PostgresUsageRepository(pool)

        def floor(_: object) -> list[Any]:
            with pool.connection() as conn:
                cur = conn.execute(_sql.SELECT_USAGE_SINCE, params, prepare=True)
                return cur.fetchall()

        yield [
            Variant(
                "PostgresUsageRepository.get_tenant_usage",
                "ours",
                per_call(
                    lambda _: repo.get_tenant_usage(owner.id, owner.since_all),
                    cycle([None]),
                    check_records,
                ),
                note="builds every UsageRecord",
            ),
            Variant(
                FLOOR_LABEL,
                "floor",
                per_call(floor, cycle([None]), check_rows),
                note="fetchall, builds nothing",
            ),
        ]


_ONE_DAY = timedelta(days=1)
# Since migration 009, ours sums the rows of the partial first day and the daily
# totals of the whole days after it; the floor runs that same statement.
_BY_DAYS: str | None = getattr(_sql, "SELECT_TOTAL_COST_BY_DAYS", None)


def total_cost_statement(tenant_id: str, since: datetime) -> tuple[str, dict[str, Any]]:
    """The statement and parameters a hand-written total-cost query would use."""
    if _BY_DAYS is None:
        return _sql.SELECT_TOTAL_COST_SINCE, {"tenant_id": tenant_id, "since": since}
    boundary = since.replace(hour=0, minute=0, second=0, microsecond=0)
    if boundary != since:
        boundary += _ONE_DAY
    params = {
        "tenant_id": tenant_id,
        "since": since,
        "boundary": boundary,
        "boundary_day": boundary.date(),
    }
    return _BY_DAYS, params


def _total_cost(
    index: int,
) -> Callable[[Context], contextlib.AbstractContextManager[list[Variant]]]:
    @contextlib.contextmanager
    def setup(ctx: Context) -> Iterator[list[Variant]]:
        lookup = ctx.data.lookup()
        owner: UsageTenant = lookup.usage[ctx.sizes.cost_rows[index]]
        since = owner.since_window
        statement, sample = total_cost_statement(owner.id, since)
        require_params(statement, sample, "get_tenant_total_cost")

        def check(_: object, result: Any) -> None:
            total = result if isinstance(result, Decimal) else result[0]
            if total != owner.total_in_window:
                raise CheckFailed(f"total {total} != {owner.total_in_window}")

        with create_pool(lookup.url) as pool:
            repo = PostgresUsageRepository(pool)

            def floor(_: object) -> Any:
                statement, params = total_cost_statement(owner.id, since)
                with pool.connection() as conn:
                    return conn.execute(statement, params, prepare=True).fetchone()

            def rows_sum(_: object) -> Any:
                params = {"tenant_id": owner.id, "since": since}
                with pool.connection() as conn:
                    cur = conn.execute(
                        _sql.SELECT_TOTAL_COST_SINCE, params, prepare=True
                    )
                    return cur.fetchone()

            variants = [
                Variant(
                    "PostgresUsageRepository.get_tenant_total_cost",
                    "ours",
                    per_call(
                        lambda _: repo.get_tenant_total_cost(owner.id, since),
                        cycle([None]),
                        check,
                    ),
                ),
                Variant(FLOOR_LABEL, "floor", per_call(floor, cycle([None]), check)),
            ]
            if _BY_DAYS is not None:
                variants.append(
                    Variant(
                        "SUM over the rows, by hand (no daily totals)",
                        "reference",
                        per_call(rows_sum, cycle([None]), check),
                    )
                )
            yield variants

    return setup


SCENARIOS = (
    Scenario("record", "record (INSERT), PostgreSQL", record),
    Scenario(
        "usage",
        "get_tenant_usage, {s.cost_rows[0]:,} rows, PostgreSQL",
        usage,
    ),
    Scenario(
        "total-cost-1k",
        "get_tenant_total_cost, 30 days of {s.cost_rows[0]:,} rows",
        _total_cost(0),
    ),
    Scenario(
        "total-cost-100k",
        "get_tenant_total_cost, 30 days of {s.cost_rows[1]:,} rows",
        _total_cost(1),
    ),
    Scenario(
        "total-cost-1m",
        "get_tenant_total_cost, 30 days of {s.cost_rows[2]:,} rows",
        _total_cost(2),
        quick=False,
    ),
)
