"""The usage writer, sync and async, on memory and PostgreSQL.

Every record submitted is stored exactly once or handed to `on_rejected`, and the
counters add up; an outage (a TCP proxy refusing and cutting connections) keeps
records pending, in order, until `max_pending`, and loses none. What a process
loses on SIGTERM and SIGKILL, with and without a spool, is test_writer_process.py's.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tenantstore import (
    AsyncInMemoryTenantRepository,
    AsyncInMemoryUsageRepository,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    AsyncUsageWriter,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    InvalidInput,
    PostgresTenantRepository,
    PostgresUsageRepository,
    RecordOutcome,
    StoreUnavailable,
    Tenant,
    TenantNotFound,
    TenantStoreError,
    UsageRecord,
    UsageWriter,
    create_async_pool,
    create_pool,
    hash_api_key,
)
from tests.polling import async_wait_until, wait_until
from tests.tcpproxy import tcp_proxy

EPOCH = datetime.min.replace(tzinfo=UTC)


def record(tenant_id: str, request_id: str, **changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "request_id": request_id,
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": "0.001",
    }
    fields.update(changes)
    return UsageRecord(**fields)


def new_tenant() -> Tenant:
    return Tenant(name="T", api_key_hash=hash_api_key(str(uuid.uuid4())))


class Switch:
    """A usage repository that fails on demand (the in-memory one behind it).

    Only what the writer calls: pass it as `Any`.
    """

    def __init__(self, inner: InMemoryUsageRepository) -> None:
        self.inner = inner
        self.down = False
        self.batches: list[list[UsageRecord]] = []

    def record_many(self, records: list[UsageRecord]) -> list[RecordOutcome]:
        if self.down:
            raise StoreUnavailable("switched off")
        self.batches.append(list(records))
        return self.inner.record_many(records)


def workload(
    known: list[str], n: int, seed: int
) -> tuple[list[UsageRecord], set[tuple[str, str]], int]:
    """`n` submissions: repeats of earlier requests and unknown tenants mixed in.

    Returns them, the distinct (tenant, request) pairs of known tenants, and how
    many submissions name an unknown tenant.
    """
    rng = random.Random(seed)
    submissions: list[UsageRecord] = []
    unknown = 0
    for i in range(n):
        roll = rng.random()
        if roll < 0.1 and submissions:
            submissions.append(rng.choice(submissions))  # a retried request
            if submissions[-1].tenant_id not in known:
                unknown += 1
        elif roll < 0.15:
            submissions.append(record(str(uuid.uuid4()), f"u{i}"))
            unknown += 1
        else:
            submissions.append(record(rng.choice(known), f"r{i}"))
    stored = {(r.tenant_id, r.request_id) for r in submissions if r.tenant_id in known}
    return submissions, stored, unknown


def stored_pairs(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tenant_id::text, request_id FROM usage_records"
        ).fetchall()
    return [(a, b) for a, b in rows]


def check_stats(
    writer: UsageWriter | AsyncUsageWriter,
    n: int,
    stored: set[tuple[str, str]],
    unknown: int,
) -> None:
    stats = writer.stats()
    assert stats.submitted == n
    assert stats.written == len(stored)
    assert stats.rejected == unknown
    assert stats.duplicates == n - len(stored) - unknown
    assert stats.pending == 0
    assert stats.submitted == (
        stats.written + stats.duplicates + stats.rejected + stats.pending
    )


def test_submits_from_8_threads_are_stored_exactly_once(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=4) as pool:
        tenants = PostgresTenantRepository(pool)
        known = [tenants.create(new_tenant()).id for _ in range(5)]
        submissions, stored, unknown = workload(known, 10_000, seed=1)
        rejected: list[tuple[UsageRecord, TenantNotFound]] = []
        lock = threading.Lock()

        def on_rejected(r: UsageRecord, error: TenantNotFound) -> None:
            with lock:
                rejected.append((r, error))

        with UsageWriter(
            PostgresUsageRepository(pool),
            max_batch=500,
            max_delay=0.01,
            on_rejected=on_rejected,
        ) as writer:

            def submit_all(part: list[UsageRecord]) -> None:
                for r in part:
                    writer.submit(r)

            threads = [
                threading.Thread(target=submit_all, args=(submissions[i::8],))
                for i in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            writer.flush()
            check_stats(writer, len(submissions), stored, unknown)
        pairs = stored_pairs(clean_db)
        assert len(pairs) == len(set(pairs)) == len(stored)
        assert set(pairs) == stored
        assert len(rejected) == unknown
        assert all(isinstance(e, TenantNotFound) for _, e in rejected)
        assert all(r.tenant_id not in known for r, _ in rejected)


def test_submits_from_200_tasks_are_stored_exactly_once(
    clean_db: str, runner: asyncio.Runner
) -> None:
    async def main() -> None:
        pool = await create_async_pool(clean_db, min_size=1, max_size=4)
        async with pool:
            tenants = AsyncPostgresTenantRepository(pool)
            known = [(await tenants.create(new_tenant())).id for _ in range(5)]
            submissions, stored, unknown = workload(known, 10_000, seed=2)
            rejected: list[UsageRecord] = []
            async with AsyncUsageWriter(
                AsyncPostgresUsageRepository(pool),
                max_batch=500,
                max_delay=0.01,
                on_rejected=lambda r, e: rejected.append(r),
            ) as writer:

                async def task(part: list[UsageRecord]) -> None:
                    for r in part:
                        writer.submit(r)
                        await asyncio.sleep(0)  # interleave with the other tasks

                async with asyncio.TaskGroup() as group:
                    for i in range(200):
                        group.create_task(task(submissions[i::200]))
                await writer.flush()
                check_stats(writer, len(submissions), stored, unknown)
            assert len(rejected) == unknown
        pairs = stored_pairs(clean_db)
        assert len(pairs) == len(set(pairs)) == len(stored)
        assert set(pairs) == stored

    runner.run(main())


def test_an_outage_keeps_records_until_max_pending_and_loses_none(
    clean_db: str,
) -> None:
    with (
        tcp_proxy(clean_db) as proxy,
        create_pool(proxy.url(clean_db), min_size=1, max_size=2, timeout=0.5) as pool,
    ):
        tenant = PostgresTenantRepository(pool).create(new_tenant())
        writer = UsageWriter(
            PostgresUsageRepository(pool),
            max_batch=50,
            max_delay=0.005,
            max_pending=300,
        )
        try:
            for i in range(100):
                writer.submit(record(tenant.id, f"before{i}"))
            writer.flush()
            proxy.refuse()
            proxy.cut()
            accepted = 0
            with pytest.raises(StoreUnavailable):  # noqa: PT012  (the loop ends by it)
                for i in range(10_000):
                    writer.submit(record(tenant.id, f"during{i}"))
                    accepted += 1
            stats = writer.stats()
            assert stats.pending == 300
            # Everything before the refusal was written; everything after waits.
            assert accepted == 300
            assert stats.written == 100
            wait_until(lambda: writer.stats().retries > 0, "the writer retried")
            with pytest.raises(StoreUnavailable):
                writer.flush(timeout=0.1)
            proxy.passthrough()
            writer.flush(timeout=60)
            stats = writer.stats()
            assert stats.written == 400
            assert stats.pending == 0
            assert stats.duplicates == 0
        finally:
            writer.close(timeout=60)
    pairs = stored_pairs(clean_db)
    assert len(pairs) == len(set(pairs)) == 400


def test_batches_keep_submission_order_through_an_outage() -> None:
    tenants = InMemoryTenantRepository()
    tenant = tenants.create(new_tenant())
    usage: Any = Switch(InMemoryUsageRepository(tenants))
    with UsageWriter(usage, max_batch=7, max_delay=0) as writer:
        usage.down = True
        for i in range(50):
            writer.submit(record(tenant.id, f"r{i}"))
        wait_until(lambda: writer.stats().retries >= 2, "the writer retried")
        usage.down = False
        writer.flush(timeout=30)
    written = [r.request_id for batch in usage.batches for r in batch]
    assert written == [f"r{i}" for i in range(50)]
    assert all(len(batch) <= 7 for batch in usage.batches)


def test_submit_validates_and_stamps_at_once() -> None:
    tenants = InMemoryTenantRepository()
    tenant = tenants.create(new_tenant())
    usage = InMemoryUsageRepository(tenants)
    with UsageWriter(usage, max_delay=3600) as writer:
        with pytest.raises(InvalidInput) as info:
            writer.submit(record(tenant.id, "r", cost_usd="-1"))
        assert info.value.field == "cost_usd"
        before = datetime.now(UTC)
        writer.submit(record(tenant.id, "r"))
        after = datetime.now(UTC)
        assert writer.stats().pending == 1
    (stored,) = usage.get_tenant_usage(tenant.id, EPOCH)
    assert stored.timestamp is not None
    assert before <= stored.timestamp <= after
    with pytest.raises(TenantStoreError):
        writer.submit(record(tenant.id, "late"))


def test_a_batch_is_written_when_full_without_waiting_for_the_delay() -> None:
    tenants = InMemoryTenantRepository()
    tenant = tenants.create(new_tenant())
    usage: Any = Switch(InMemoryUsageRepository(tenants))
    with UsageWriter(usage, max_batch=10, max_delay=3600) as writer:
        for i in range(25):
            writer.submit(record(tenant.id, f"r{i}"))
        wait_until(lambda: writer.stats().written == 20, "two full batches")
        assert writer.stats().pending == 5  # the rest waits for max_delay
        writer.flush()
        assert writer.stats().written == 25


def test_closing_or_collecting_with_records_pending_logs_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenants = InMemoryTenantRepository()
    tenant = tenants.create(new_tenant())
    usage: Any = Switch(InMemoryUsageRepository(tenants))
    usage.down = True
    writer = UsageWriter(usage, max_delay=0)
    for i in range(3):
        writer.submit(record(tenant.id, f"r{i}"))
    with (
        caplog.at_level(logging.ERROR, logger="tenantstore"),
        pytest.raises(StoreUnavailable),
    ):
        writer.close(timeout=0.05)
    assert "closed with 3 record(s) not written (lost)" in caplog.text
    caplog.clear()
    abandoned = UsageWriter(usage, max_delay=3600)
    for i in range(4):
        abandoned.submit(record(tenant.id, f"a{i}"))
    with caplog.at_level(logging.ERROR, logger="tenantstore"):
        del abandoned
        gc.collect()
    assert "collected before close with 4 record(s) not written" in caplog.text
    usage.down = False  # the abandoned writer's flusher finishes its work
    wait_until(
        lambda: len(usage.inner.get_tenant_usage(tenant.id, EPOCH)) == 4,
        "the abandoned writer's records are written",
    )


def test_bad_settings_are_invalid_input() -> None:
    usage = InMemoryUsageRepository(InMemoryTenantRepository())
    settings: list[tuple[dict[str, Any], str]] = [
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 10, "max_pending": 5}, "max_pending"),
        ({"max_delay": -1}, "max_delay"),
    ]
    for kwargs, field in settings:
        with pytest.raises(InvalidInput) as info:
            UsageWriter(usage, **kwargs)
        assert info.value.field == field


def test_async_writer_on_memory_flushes_and_closes(runner: asyncio.Runner) -> None:
    async def main() -> None:
        tenants = AsyncInMemoryTenantRepository()
        tenant = await tenants.create(new_tenant())
        usage = AsyncInMemoryUsageRepository(tenants)
        async with AsyncUsageWriter(usage, max_batch=10, max_delay=3600) as writer:
            for i in range(25):
                writer.submit(record(tenant.id, f"r{i}"))
            await async_wait_until(
                lambda: writer.stats().written == 20, "two full batches"
            )
            await writer.flush()
            assert writer.stats().written == 25
            writer.submit(record(tenant.id, "last"))
        assert writer.stats().written == 26
        assert len(await usage.get_tenant_usage(tenant.id, EPOCH)) == 26

    runner.run(main())


def test_on_done_gets_each_records_outcome_after_its_batch_commits() -> None:
    tenants = InMemoryTenantRepository()
    tenant = tenants.create(new_tenant())
    usage: Any = Switch(InMemoryUsageRepository(tenants))
    seen: list[tuple[str, RecordOutcome]] = []

    def on_done(request_id: str) -> Any:
        return lambda outcome: seen.append((request_id, outcome))

    submissions = [
        (record(tenant.id, "a"), True),
        (record(tenant.id, "b"), False),  # no callback: positions still count
        (record(tenant.id, "a"), True),  # a retried request
        (record(str(uuid.uuid4()), "c"), True),  # a tenant that does not exist
        (record(tenant.id, "d"), False),
        (record(tenant.id, "e"), True),
    ]
    with UsageWriter(usage, max_batch=3, max_delay=3600) as writer:
        usage.down = True
        for submitted, with_callback in submissions:
            callback = on_done(submitted.request_id) if with_callback else None
            writer.submit(submitted, on_done=callback)
        # A full batch is due at once: the outage keeps it.
        wait_until(lambda: writer.stats().retries >= 1, "a batch failed")
        assert seen == []  # nothing committed, nothing reported
        usage.down = False
        writer.flush(timeout=30)
    assert seen == [
        ("a", RecordOutcome.INSERTED),
        ("a", RecordOutcome.DUPLICATE),
        ("c", RecordOutcome.UNKNOWN_TENANT),
        ("e", RecordOutcome.INSERTED),
    ]
