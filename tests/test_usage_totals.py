"""The daily totals (migration 009) always equal the sum of the rows they stand for.

`get_tenant_total_cost` reads a partial first day of rows plus one total per later
UTC day; whatever writes usage_records (this library, raw SQL updates and deletes,
another service), the answer must equal a plain SUM over the rows, to the digit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from tenantstore import (
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    UsageRecord,
    hash_api_key,
)
from tests.fix_postgres import truncate

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
instants = st.integers(min_value=0, max_value=4 * 86400 * 10**6).map(
    lambda us: DAY0 + timedelta(microseconds=us)
)
# Midnights and their neighbours are where a partial day meets whole days.
edges = st.sampled_from(
    [DAY0 + timedelta(days=d, microseconds=e) for d in range(5) for e in (-1, 0, 1)]
)
costs = st.decimals(min_value=0, max_value=1000, places=10, allow_nan=False)


def naive_total(url: str, tenant_id: str, since: datetime) -> Decimal:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_records"
            " WHERE tenant_id = %s AND created_at >= %s",
            (tenant_id, since),
        ).fetchone()
    assert row is not None
    total: Decimal = row[0]
    return total


@settings(max_examples=40)
@given(
    records=st.lists(st.tuples(st.one_of(instants, edges), costs), max_size=25),
    sinces=st.lists(st.one_of(instants, edges), min_size=1, max_size=5),
    raw_changes=st.lists(st.sampled_from(["update", "delete", "move"]), max_size=3),
)
def test_total_by_days_equals_the_sum_of_rows(
    session_pool: ConnectionPool,
    pg_url: str,
    records: list[tuple[datetime, Decimal]],
    sinces: list[datetime],
    raw_changes: list[str],
) -> None:
    truncate(pg_url)
    tenants = PostgresTenantRepository(session_pool)
    usage = PostgresUsageRepository(session_pool)
    tenant = tenants.create(Tenant(name="T", api_key_hash=hash_api_key("k")))
    other = tenants.create(Tenant(name="U", api_key_hash=hash_api_key("u")))
    for i, (when, cost) in enumerate(records):
        for owner in (tenant, other):
            usage.record(
                UsageRecord(
                    tenant_id=owner.id,
                    request_id=f"r{i}",
                    model="m",
                    provider="p",
                    cost_usd=cost,
                    timestamp=when,
                )
            )
    # Writers other than this library: the trigger keeps the totals right.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for change in raw_changes:
            if change == "update":
                conn.execute(
                    "UPDATE usage_records SET cost_usd = cost_usd + 1"
                    " WHERE request_id = 'r0'"
                )
            elif change == "delete":
                conn.execute("DELETE FROM usage_records WHERE request_id = 'r1'")
            else:
                conn.execute(
                    "UPDATE usage_records"
                    " SET created_at = created_at + interval '1 day'"
                    " WHERE request_id = 'r2'"
                )
    for since in sinces:
        for owner in (tenant, other):
            assert usage.get_tenant_total_cost(owner.id, since) == naive_total(
                pg_url, owner.id, since
            )


def test_totals_at_the_end_of_time(pool: ConnectionPool) -> None:
    tenants = PostgresTenantRepository(pool)
    usage = PostgresUsageRepository(pool)
    tenant = tenants.create(Tenant(name="T", api_key_hash=hash_api_key("k")))
    last = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    usage.record(
        UsageRecord(
            tenant_id=tenant.id,
            request_id="late",
            model="m",
            provider="p",
            cost_usd=Decimal("1.5"),
            timestamp=last,
        )
    )
    assert usage.get_tenant_total_cost(tenant.id, last - timedelta(hours=1)) == Decimal(
        "1.5"
    )
    assert usage.get_tenant_total_cost(tenant.id, last) == Decimal("1.5")
    first = datetime(1, 1, 1, 0, 30, tzinfo=UTC)
    assert usage.get_tenant_total_cost(tenant.id, first) == Decimal("1.5")
