"""`record_many` on every backend: outcomes in input order, one transaction.

The backends come from test_contract's `stores` fixture; the differential state
machine checks that they agree, these check what they agree on. The concurrent
delete is PostgreSQL's alone (memory has no concurrent transactions).
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest

from tenantstore import (
    InvalidInput,
    PostgresTenantRepository,
    PostgresUsageRepository,
    RecordOutcome,
    StoreUnavailable,
    create_pool,
)
from tests.polling import wait_until
from tests.test_contract import Stores, new_tenant, stores, usage

__all__ = ["stores"]  # the fixture, imported for this module's tests

EPOCH = datetime.min.replace(tzinfo=UTC)
INSERTED = RecordOutcome.INSERTED
DUPLICATE = RecordOutcome.DUPLICATE
UNKNOWN = RecordOutcome.UNKNOWN_TENANT
NOBODY = "00000000-0000-4000-8000-000000000000"


def test_outcomes_in_input_order(stores: Stores) -> None:
    a, _ = new_tenant()
    b, _ = new_tenant()
    stores.tenants.create(a)
    stores.tenants.create(b)
    assert stores.usage.record(usage(a.id, "old")) is True
    outcomes = stores.usage.record_many(
        [
            usage(a.id, "r1"),
            usage(NOBODY, "r1"),
            usage(a.id, "old"),  # stored before
            usage(b.id, "r1"),  # same request id, another tenant
            usage(a.id, "r1", cost_usd=Decimal("9")),  # earlier in this batch
            usage(NOBODY, "r1"),
        ]
    )
    assert outcomes == [INSERTED, UNKNOWN, DUPLICATE, INSERTED, DUPLICATE, UNKNOWN]
    stored = stores.usage.get_tenant_usage(a.id, EPOCH)
    assert sorted(r.request_id for r in stored) == ["old", "r1"]
    # The first of the repeated pair is the one kept.
    assert next(r for r in stored if r.request_id == "r1").cost_usd == usage(
        a.id
    ).cost_usd.quantize(Decimal("1E-10"))
    assert stores.usage.record_many([]) == []


def test_a_record_stored_before_is_a_duplicate_in_an_otherwise_clean_batch(
    stores: Stores,
) -> None:
    # No unknown tenant and no repeat inside the batch: on PostgreSQL the fast
    # path (a plain COPY) runs first, and 005's trigger skips the stored row
    # without an error; the outcome must still say DUPLICATE.
    a, _ = new_tenant()
    stores.tenants.create(a)
    assert stores.usage.record(usage(a.id, "old")) is True
    outcomes = stores.usage.record_many([usage(a.id, "new"), usage(a.id, "old")])
    assert outcomes == [INSERTED, DUPLICATE]
    assert stores.usage.record_many([usage(a.id, "new")]) == [DUPLICATE]
    stored = stores.usage.get_tenant_usage(a.id, EPOCH)
    assert sorted(r.request_id for r in stored) == ["new", "old"]


def test_a_pair_repeated_in_an_otherwise_clean_batch_is_a_duplicate(
    stores: Stores,
) -> None:
    # On PostgreSQL the fast path (a plain COPY) sends each pair once.
    a, _ = new_tenant()
    stores.tenants.create(a)
    outcomes = stores.usage.record_many(
        [
            usage(a.id, "r1"),
            usage(a.id, "r1", cost_usd=Decimal("9")),
            usage(a.id, "r2"),
        ]
    )
    assert outcomes == [INSERTED, DUPLICATE, INSERTED]
    stored = stores.usage.get_tenant_usage(a.id, EPOCH)
    assert sorted(r.request_id for r in stored) == ["r1", "r2"]
    assert next(r for r in stored if r.request_id == "r1").cost_usd != Decimal("9")


def test_a_batch_round_trips_every_field(stores: Stores) -> None:
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    records = [usage(tenant.id, f"r{i}", input_tokens=i, model=f"m{i}") for i in (1, 2)]
    assert stores.usage.record_many(records) == [INSERTED, INSERTED]
    stored = sorted(
        stores.usage.get_tenant_usage(tenant.id, EPOCH), key=lambda r: r.request_id
    )
    assert stored == [
        dataclasses.replace(r, cost_usd=Decimal("0.0000001000")) for r in records
    ]


def test_an_invalid_record_is_named_and_nothing_is_written(stores: Stores) -> None:
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    batch = [usage(tenant.id, f"r{i}") for i in range(5)]
    batch[3] = dataclasses.replace(batch[3], cost_usd=Decimal("-1"))
    with pytest.raises(InvalidInput) as info:
        stores.usage.record_many(batch)
    assert info.value.field == "records[3].cost_usd"
    with pytest.raises(InvalidInput) as info:
        stores.usage.record_many([batch[0], "not a record"])
    assert info.value.field == "records[1]"
    with pytest.raises(InvalidInput) as info:
        stores.usage.record_many(batch[0])
    assert info.value.field == "records"
    assert stores.usage.get_tenant_usage(tenant.id, EPOCH) == []


def _wait_for_lock(url: str) -> None:
    def waiting() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
        return row is not None and row[0] > 0

    wait_until(waiting, "the batch waits for the deleting transaction")


def test_a_tenant_deleted_during_the_batch_does_not_abort_it(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=2) as pool:
        tenants = PostgresTenantRepository(pool)
        usage_repo = PostgresUsageRepository(pool)
        kept = tenants.create(new_tenant()[0])
        doomed = tenants.create(new_tenant()[0])
        result: list[list[RecordOutcome]] = []
        with psycopg.connect(clean_db) as deleter:
            deleter.execute("DELETE FROM tenants WHERE id = %s", (doomed.id,))
            # The delete holds the tenant's row until it commits: the batch waits.
            batch = threading.Thread(
                target=lambda: result.append(
                    usage_repo.record_many(
                        [
                            usage(kept.id, "a"),
                            usage(doomed.id, "b"),
                            usage(kept.id, "c"),
                        ]
                    )
                )
            )
            batch.start()
            _wait_for_lock(clean_db)
            deleter.commit()
        batch.join()
        assert result == [[INSERTED, UNKNOWN, INSERTED]]
        assert len(usage_repo.get_tenant_usage(kept.id, EPOCH)) == 2


def test_an_unreachable_store_commits_nothing(clean_db: str) -> None:
    from tests.tcpproxy import tcp_proxy

    with (
        tcp_proxy(clean_db) as proxy,
        create_pool(proxy.url(clean_db), min_size=1, max_size=1, timeout=1) as pool,
    ):
        tenants = PostgresTenantRepository(pool)
        usage_repo = PostgresUsageRepository(pool)
        tenant = tenants.create(new_tenant()[0])
        proxy.refuse()
        proxy.cut()
        with pytest.raises(StoreUnavailable):
            usage_repo.record_many([usage(tenant.id, "a")])
        proxy.passthrough()
    with psycopg.connect(clean_db) as conn:
        row = conn.execute("SELECT count(*) FROM usage_records").fetchone()
    assert row == (0,)
