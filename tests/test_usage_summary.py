"""The sharded daily totals (migration 012) equal GROUP BY over the rows, always.

Summaries and total costs are read from the totals; whatever writes usage_records
(this library's record and record_many, raw UPDATE/DELETE/TRUNCATE, a bulk COPY,
writers in parallel), they must equal grouping and summing the rows. Two writers
of one tenant never wait for each other's commit (no hot row), and prune_usage
removes rows while the totals keep counting them.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from tenantstore import (
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    UsageRecord,
    UsageSummary,
    create_pool,
    hash_api_key,
)
from tests.fix_postgres import truncate

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
EPOCH = datetime.min.replace(tzinfo=UTC)
instants = st.integers(min_value=0, max_value=3 * 86400 * 10**6).map(
    lambda us: DAY0 + timedelta(microseconds=us)
)
costs = st.decimals(min_value=0, max_value=1000, places=10, allow_nan=False)
models = st.sampled_from(["gpt-4o", "claude", "Z", "é"])


def grouped(url: str, tenant_id: str) -> list[UsageSummary]:
    """GROUP BY over the rows: what the summary must equal."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT (created_at AT TIME ZONE 'UTC')::date, model, count(*),"
            " sum(input_tokens), sum(output_tokens), sum(cost_usd)"
            " FROM usage_records WHERE tenant_id = %s"
            ' GROUP BY 1, 2 ORDER BY 1, model COLLATE "C"',
            (tenant_id,),
        ).fetchall()
    return [
        UsageSummary(
            day=r[0],
            model=r[1],
            records=r[2],
            input_tokens=int(r[3]),
            output_tokens=int(r[4]),
            cost_usd=r[5],
        )
        for r in rows
    ]


def summed(url: str, tenant_id: str, since: datetime) -> Decimal:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_records"
            " WHERE tenant_id = %s AND created_at >= %s",
            (tenant_id, since),
        ).fetchone()
    assert row is not None
    total: Decimal = row[0]
    return total


def usage(tenant_id: str, request_id: str, **changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "request_id": request_id,
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 3,
        "output_tokens": 4,
        "cost_usd": "0.25",
        "timestamp": DAY0,
    }
    fields.update(changes)
    return UsageRecord(**fields)


def new_tenant(tenants: PostgresTenantRepository) -> str:
    tenant = Tenant(name="T", api_key_hash=hash_api_key(str(uuid.uuid4())))
    return tenants.create(tenant).id


@settings(max_examples=30)
@given(
    records=st.lists(
        st.tuples(instants, models, st.integers(0, 10**6), costs), max_size=20
    ),
    raw_changes=st.lists(
        st.sampled_from(["update", "delete", "move", "model", "copy", "truncate"]),
        max_size=4,
    ),
)
def test_summaries_equal_group_by_whoever_writes(
    session_pool: ConnectionPool,
    pg_url: str,
    records: list[tuple[datetime, str, int, Decimal]],
    raw_changes: list[str],
) -> None:
    truncate(pg_url)
    tenants = PostgresTenantRepository(session_pool)
    repo = PostgresUsageRepository(session_pool)
    owners = [new_tenant(tenants), new_tenant(tenants)]
    batch = [
        usage(owner, f"r{i}", timestamp=when, model=model, input_tokens=n, cost_usd=c)
        for i, (when, model, n, c) in enumerate(records)
        for owner in owners
    ]
    half = len(batch) // 2
    repo.record_many(batch[:half])
    for r in batch[half:]:
        repo.record(r)
    # Writers other than this library: the triggers keep the totals right.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for change in raw_changes:
            if change == "update":
                conn.execute(
                    "UPDATE usage_records SET cost_usd = cost_usd + 1,"
                    " input_tokens = input_tokens + 5 WHERE request_id = 'r0'"
                )
            elif change == "delete":
                conn.execute("DELETE FROM usage_records WHERE request_id = 'r1'")
            elif change == "move":
                conn.execute(
                    "UPDATE usage_records"
                    " SET created_at = created_at + interval '1 day'"
                    " WHERE request_id = 'r2'"
                )
            elif change == "model":
                conn.execute("UPDATE usage_records SET model = 'other'")
            elif change == "copy":
                with conn.cursor().copy(
                    "COPY usage_records (tenant_id, request_id, model, provider,"
                    " input_tokens, output_tokens, cost_usd, created_at) FROM STDIN"
                ) as copy:
                    for i in range(5):
                        copy.write_row(
                            (owners[i % 2], f"c{uuid.uuid4()}", "bulk", "p", i, 1,
                             Decimal("0.1"), DAY0 + timedelta(hours=i * 7))
                        )  # fmt: skip
            else:
                conn.execute("TRUNCATE usage_records")
    for owner in owners:
        assert repo.get_tenant_usage_summary(owner, date(2000, 1, 1)) == grouped(
            pg_url, owner
        )
        for since in (DAY0, DAY0 + timedelta(hours=30)):
            assert repo.get_tenant_total_cost(owner, since) == summed(
                pg_url, owner, since
            )
        # A window of days: the same groups, cut.
        window = repo.get_tenant_usage_summary(
            owner, DAY0.date() + timedelta(days=1), DAY0.date() + timedelta(days=2)
        )
        assert window == [
            s for s in grouped(pg_url, owner) if s.day == DAY0.date() + timedelta(1)
        ]


def _shards(url: str, tenant_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM usage_daily_totals WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchone()
    assert row is not None
    count: int = row[0]
    return count


@contextlib.contextmanager
def _other_slot(url: str, first: psycopg.Connection[Any]) -> Iterator[Any]:
    """A connection whose backend begins a group at a slot other than `first`'s
    (the slot is the pid modulo 64: two backends share one once in 64)."""
    with contextlib.ExitStack() as stack:
        while True:
            conn = stack.enter_context(psycopg.connect(url, autocommit=True))
            if conn.info.backend_pid % 64 != first.info.backend_pid % 64:
                yield conn
                return


def test_two_writers_of_one_tenant_do_not_wait_for_each_other(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=2) as pool:
        tenant_id = new_tenant(PostgresTenantRepository(pool))
        repo = PostgresUsageRepository(pool)
        with psycopg.connect(clean_db) as first:
            first.execute(  # holds its totals shard until it commits
                "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
                " input_tokens, output_tokens, cost_usd, created_at)"
                " VALUES (%s, 'open', 'gpt-4o', 'p', 1, 2, 0.5, %s)",
                (tenant_id, DAY0),
            )
            # On one totals row this would wait for `first` (forever: it is
            # this thread's); lock_timeout turns such a wait into an error.
            with _other_slot(clean_db, first) as second:
                second.execute("SET lock_timeout = '2s'")
                second.execute(
                    "INSERT INTO usage_records (tenant_id, request_id, model,"
                    " provider, input_tokens, output_tokens, cost_usd, created_at)"
                    " VALUES (%s, 'other', 'gpt-4o', 'p', 1, 2, 0.25, %s)",
                    (tenant_id, DAY0),
                )
            assert repo.record_many([usage(tenant_id, "batch")])  # and ours
            first.commit()
        assert _shards(clean_db, tenant_id) == 2
        (summary,) = repo.get_tenant_usage_summary(tenant_id, DAY0.date())
        assert (summary.records, summary.input_tokens, summary.output_tokens) == (
            3,
            5,
            8,
        )
        assert summary.cost_usd == Decimal("1.00")
        assert summary == grouped(clean_db, tenant_id)[0]


def test_concurrent_writers_keep_the_totals_exact(clean_db: str) -> None:
    with create_pool(clean_db, min_size=4, max_size=8) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant_ids = [new_tenant(tenants) for _ in range(2)]
        repo = PostgresUsageRepository(pool)

        def write(worker: int) -> None:
            for i in range(60):
                tenant_id = tenant_ids[i % 2]
                when = DAY0 + timedelta(hours=i % 30)
                model = ["a", "b"][worker % 2]
                if i % 3:
                    repo.record(usage(tenant_id, f"{worker}-{i}", timestamp=when))
                else:
                    repo.record_many(
                        [
                            usage(tenant_id, f"{worker}-{i}-{k}", model=model)
                            for k in range(5)
                        ]
                    )

        threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        with psycopg.connect(clean_db, autocommit=True) as outside:
            outside.execute(
                "UPDATE usage_records SET cost_usd = cost_usd * 2 WHERE model = 'a'"
            )
        for thread in threads:
            thread.join()
        for tenant_id in tenant_ids:
            assert repo.get_tenant_usage_summary(tenant_id, DAY0.date()) == grouped(
                clean_db, tenant_id
            )
            assert repo.get_tenant_total_cost(tenant_id, DAY0) == summed(
                clean_db, tenant_id, DAY0
            )


def test_prune_deletes_rows_and_the_totals_keep_counting_them(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=2) as pool:
        tenant_id = new_tenant(PostgresTenantRepository(pool))
        repo = PostgresUsageRepository(pool)
        old = [usage(tenant_id, f"old{i}", timestamp=DAY0) for i in range(7)]
        new = [
            usage(tenant_id, f"new{i}", timestamp=DAY0 + timedelta(2)) for i in (1, 2)
        ]
        repo.record_many(old + new)
        before = repo.get_tenant_usage_summary(tenant_id, DAY0.date())
        budget = repo.get_tenant_total_cost(tenant_id, DAY0)
        assert repo.prune_usage(DAY0 + timedelta(days=1)) == 7
        assert repo.prune_usage(DAY0 + timedelta(days=1)) == 0
        assert [r.request_id for r in repo.get_tenant_usage(tenant_id, EPOCH)] == [
            "new1",
            "new2",
        ]
        assert repo.get_tenant_usage_summary(tenant_id, DAY0.date()) == before
        assert repo.get_tenant_total_cost(tenant_id, DAY0) == budget == Decimal("2.25")
        # Deleting rows otherwise still subtracts them.
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute("DELETE FROM usage_records WHERE request_id = 'new1'")
        assert repo.get_tenant_total_cost(tenant_id, DAY0) == Decimal("2.00")
