"""The usage pipeline: the writer's throughput and submit latency, and a hot tenant.

- `writer-throughput`: records per second from the first `submit` to `flush`
  returning (all of them committed), against raw COPY of 1,000-row batches with no
  idempotency (the floor), executemany of the idempotent INSERT in 1,000-row
  transactions, and `record()` one call at a time. Every variant writes fresh
  request ids into the same table and indexes, turn about, and checks how many
  rows it stored.
- `writer-submit` / `writer-submit-spool`: the time of one `submit` (validate,
  stamp, queue; with the spool also the append to its log), against the floor of
  the same validation plus `deque.append`. The flusher is held back while a sample
  runs (max_delay of an hour) and drains between samples, untimed.
- `hot-tenant`: four processes calling `record()` for one tenant, against the same
  four processes recording for four tenants. Their connections wait 2 ms at each
  commit (`commit_delay`, a networked disk's flush time; superuser), which is how
  long a row lock taken in the transaction is held: on one totals row per tenant
  and day, the four would commit one after another.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection

from psycopg.conninfo import make_conninfo

from benchmarks.measure import CheckFailed, Sampled, Series, Target, Variant
from benchmarks.scenario import Context, Scenario
from tenantstore import (
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    PostgresUsageRepository,
    Tenant,
    UsageRecord,
    UsageWriter,
    _sql,
    create_pool,
    hash_api_key,
)
from tenantstore._validation import usage_for_write

__all__ = ["SCENARIOS"]

# Throughput at least 0.8x the floor's: a time per record at most 1.25x.
THROUGHPUT_TARGET = Target(1.25, "≥ 0.8x records/s")
SUBMIT_TARGET = Target(1.5, "≤ 1.5x")
COPY_COLUMNS = (
    "tenant_id, request_id, model, provider, input_tokens, output_tokens,"
    " cost_usd, cached, latency_ms, status, created_at"
)
COMMIT_DELAY = "-c commit_delay=2000 -c commit_siblings=0"
HOT_PROCESSES = 4


def _records(tenant_ids: list[str], prefix: str, n: int) -> list[UsageRecord]:
    return [
        UsageRecord(
            tenant_id=tenant_ids[i % len(tenant_ids)],
            request_id=f"{prefix}-{i:07d}",
            model="gpt-4o-mini",
            provider="openai",
            input_tokens=1200,
            output_tokens=350,
            cost_usd=Decimal("0.0003930000"),
            latency_ms=840,
        )
        for i in range(n)
    ]


def _fresh(
    run: Callable[[list[UsageRecord]], int],
    make: Callable[[str], list[UsageRecord]],
    after: Callable[[], None] = lambda: None,
) -> Series:
    """Each sample times `run` over new records (made untimed), per record;
    `run` returns how many it stored, which must be all of them."""
    counter = itertools.count()
    clock, cpu_clock = time.perf_counter, time.thread_time

    def series(n: int) -> Sampled:
        times, cpu = [0.0] * n, [0.0] * n
        checked = 0
        for i in range(n):
            records = make(f"{uuid.uuid4().hex[:8]}{next(counter)}")
            c0 = cpu_clock()
            t0 = clock()
            stored = run(records)
            t1 = clock()
            c1 = cpu_clock()
            after()
            if stored != len(records):
                raise CheckFailed(f"stored {stored} of {len(records)} records")
            times[i] = (t1 - t0) / len(records)
            cpu[i] = (c1 - c0) / len(records)
            checked += len(records)
        return Sampled(times, cpu, checked)

    return series


def _chunks(
    records: list[UsageRecord], size: int = 1000
) -> Iterator[list[UsageRecord]]:
    for i in range(0, len(records), size):
        yield records[i : i + size]


@contextlib.contextmanager
def writer_throughput(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    tenant = [lookup.recorder_id]
    n = max(1000, ctx.batch * 25)  # records per sample; record() takes a tenth
    with create_pool(lookup.url, min_size=2, max_size=4) as pool:
        repo = PostgresUsageRepository(pool)
        writer = UsageWriter(repo, max_batch=1000, max_delay=0.05)

        def ours(records: list[UsageRecord]) -> int:
            before = writer.stats().written
            for r in records:
                writer.submit(r)
            writer.flush()
            return writer.stats().written - before

        def raw_copy(records: list[UsageRecord]) -> int:
            with pool.connection() as conn:
                for chunk in _chunks(records):
                    now = datetime.now(UTC)
                    with (
                        conn.transaction(),
                        conn.cursor().copy(
                            f"COPY usage_records ({COPY_COLUMNS}) FROM STDIN"
                        ) as copy,
                    ):
                        for r in chunk:
                            copy.write_row(
                                (r.tenant_id, r.request_id, r.model, r.provider,
                                 r.input_tokens, r.output_tokens, r.cost_usd,
                                 r.cached, r.latency_ms, r.status, now)
                            )  # fmt: skip
            return len(records)

        def executemany(records: list[UsageRecord]) -> int:
            stored = 0
            with pool.connection() as conn:
                for chunk in _chunks(records):
                    now = datetime.now(UTC)
                    params = [
                        {
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
                            "created_at": now,
                        }
                        for r in chunk
                    ]
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(_sql.INSERT_USAGE, params, returning=False)
                        stored += cur.rowcount
            return stored

        def one_at_a_time(records: list[UsageRecord]) -> int:
            return sum(repo.record(r) for r in records)

        try:
            yield [
                Variant(
                    "UsageWriter: submit, then flush (1,000-record batches)",
                    "ours",
                    _fresh(ours, lambda p: _records(tenant, p, n)),
                    note="idempotent; outcome per record",
                ),
                Variant(
                    "raw COPY, 1,000 rows per transaction, no idempotency",
                    "floor",
                    _fresh(raw_copy, lambda p: _records(tenant, p, n)),
                    target=THROUGHPUT_TARGET,
                ),
                Variant(
                    "executemany INSERT ... ON CONFLICT, 1,000 per transaction",
                    "reference",
                    _fresh(executemany, lambda p: _records(tenant, p, n)),
                ),
                Variant(
                    "PostgresUsageRepository.record, one call at a time",
                    "reference",
                    _fresh(one_at_a_time, lambda p: _records(tenant, p, n // 10)),
                ),
            ]
        finally:
            writer.close()


def _submit(
    spool: bool,
) -> Callable[[Context], contextlib.AbstractContextManager[list[Variant]]]:
    @contextlib.contextmanager
    def setup(ctx: Context) -> Iterator[list[Variant]]:
        tenants = InMemoryTenantRepository()
        tenant = tenants.create(Tenant(name="bench", api_key_hash=hash_api_key("b")))
        usage = InMemoryUsageRepository(tenants)
        n = ctx.batch
        with contextlib.ExitStack() as stack:
            directory = (
                stack.enter_context(tempfile.TemporaryDirectory()) if spool else None
            )
            writer = stack.enter_context(
                UsageWriter(
                    usage,
                    max_batch=1_000_000,
                    max_pending=10_000_000,
                    max_delay=3600,
                    spool=directory,
                )
            )
            submit = writer.submit
            queue: deque[UsageRecord] = deque()
            append = queue.append
            now = datetime.now

            def ours(records: list[UsageRecord]) -> int:
                for r in records:
                    submit(r)
                return len(records)

            def floor(records: list[UsageRecord]) -> int:
                for r in records:
                    append(usage_for_write(r, now(UTC)))
                return len(records)

            def drain() -> None:
                # Untimed: the flusher writes the sample, the floor's queue empties.
                writer.flush()
                queue.clear()

            yield [
                Variant(
                    "UsageWriter.submit" + (" with a spool" if spool else ""),
                    "ours",
                    _fresh(ours, lambda p: _records([tenant.id], p, n), drain),
                    note="+ one os.write per record" if spool else "",
                ),
                Variant(
                    "usage_for_write + deque.append",
                    "floor",
                    _fresh(floor, lambda p: _records([tenant.id], p, n), drain),
                    target=SUBMIT_TARGET,
                ),
            ]

    return setup


def _hot_worker(url: str, pipe: Connection) -> None:
    """A gateway process: record() each record it is sent, one call at a time."""
    conninfo = make_conninfo(url, options=COMMIT_DELAY)
    with create_pool(conninfo, min_size=1, max_size=1) as pool:
        repo = PostgresUsageRepository(pool)
        pipe.send("ready")
        while True:
            job = pipe.recv()
            if job is None:
                return
            pipe.send(sum(repo.record(r) for r in job))


@contextlib.contextmanager
def hot_tenant(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    four = [t.id for t in lookup.tenants.tenants[:HOT_PROCESSES]]
    per_process = max(10, ctx.batch // 4)
    spawn = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    workers = []
    try:
        for _ in range(HOT_PROCESSES):
            ours_end, theirs = spawn.Pipe()
            worker = spawn.Process(
                target=_hot_worker, args=(lookup.url, theirs), daemon=True
            )
            worker.start()
            pipes.append(ours_end)
            workers.append(worker)
        for pipe in pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a hot-tenant worker did not start")
        ctx.pin()

        def run_all(records: list[UsageRecord]) -> int:
            share = len(records) // HOT_PROCESSES
            for w, pipe in enumerate(pipes):
                pipe.send(records[w * share : (w + 1) * share])
            return sum(pipe.recv() for pipe in pipes)

        def jobs(
            tenants_of: Callable[[int], str],
        ) -> Callable[[str], list[UsageRecord]]:
            def make(prefix: str) -> list[UsageRecord]:
                records = []
                for w in range(HOT_PROCESSES):
                    for r in _records([tenants_of(w)], f"{prefix}-{w}", per_process):
                        records.append(r)
                return records

            return make

        yield [
            Variant(
                f"{HOT_PROCESSES} processes record() for one tenant",
                "ours",
                _fresh(run_all, jobs(lambda w: four[0])),
                note="commit_delay 2 ms",
            ),
            Variant(
                f"{HOT_PROCESSES} processes record() for {HOT_PROCESSES} tenants",
                "reference",
                _fresh(run_all, jobs(lambda w: four[w])),
                target=THROUGHPUT_TARGET,
            ),
        ]
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()


SCENARIOS = (
    Scenario(
        "writer-throughput",
        "UsageWriter throughput, submit to flushed, PostgreSQL",
        writer_throughput,
    ),
    Scenario(
        "writer-submit",
        "UsageWriter.submit latency",
        _submit(spool=False),
        database=False,
    ),
    Scenario(
        "writer-submit-spool",
        "UsageWriter.submit latency, with a spool",
        _submit(spool=True),
        database=False,
    ),
    Scenario(
        "hot-tenant",
        f"{HOT_PROCESSES} processes record() into one tenant, commit_delay 2 ms",
        hot_tenant,
    ),
)
