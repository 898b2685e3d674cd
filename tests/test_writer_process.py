"""What a writer's process loses when it stops: each row of the README's table.

Real child processes record through a `UsageWriter` into PostgreSQL and are sent
SIGTERM (handled as servers do: `sys.exit` from the handler, which unwinds `with`
blocks and runs atexit) or SIGKILL; the spool's own guarantees (replay, torn
records, one live writer per directory, truncation) are tested beside them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tenantstore import (
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    InvalidInput,
    PostgresTenantRepository,
    PostgresUsageRepository,
    StoreUnavailable,
    UsageWriter,
    create_pool,
)
from tenantstore._spool import Spool, decode, encode
from tenantstore._validation import usage_for_write
from tests import strategies as s
from tests.polling import wait_until
from tests.test_writer import Switch, new_tenant, record

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from tenantstore import PostgresUsageRepository, UsageRecord, UsageWriter
    from tenantstore import create_pool

    url, tenant_id, n, style, spool = sys.argv[1:6]
    spool = spool or None
    if style != "unhandled":  # Python's default: SIGTERM kills, atexit never runs
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def records():
        for i in range(int(n)):
            yield UsageRecord(
                tenant_id=tenant_id, request_id=f"r{i}", model="m", provider="p"
            )

    def serve(writer):
        for i, r in enumerate(records()):
            writer.submit(r)
            if style == "count":
                print(i + 1, flush=True)
        print("submitted", flush=True)
        while True:
            time.sleep(1)

    settings = dict(max_batch=100, max_delay=3600, spool=spool)
    if style == "async":  # an asyncio server: SIGTERM ends serving, then shutdown
        import asyncio
        from tenantstore import AsyncPostgresUsageRepository, AsyncUsageWriter
        from tenantstore import create_async_pool

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            async with await create_async_pool(url, min_size=1, max_size=2) as pool:
                usage = AsyncPostgresUsageRepository(pool)
                async with AsyncUsageWriter(usage, **settings) as writer:
                    for r in records():
                        writer.submit(r)
                    print("submitted", flush=True)
                    await stop.wait()

        asyncio.run(main())
    elif style == "with":  # what a lifespan hook or `with` block in main does
        with create_pool(url, min_size=1, max_size=2) as pool:
            with UsageWriter(PostgresUsageRepository(pool), **settings) as writer:
                serve(writer)
    else:  # built at startup, never closed: atexit flushes
        pool = create_pool(url, min_size=1, max_size=2)
        serve(UsageWriter(PostgresUsageRepository(pool), **settings))
    """
)


@contextlib.contextmanager
def child_process(
    url: str, tenant_id: str, n: int, style: str, spool: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, url, tenant_id, str(n), style, str(spool or "")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        try:
            yield child
        finally:
            if child.poll() is None:
                child.kill()


def stored_requests(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT request_id FROM usage_records").fetchall()
    return [r[0] for r in rows]


def wait_for_line(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdout is not None
    for got in child.stdout:
        if got.strip() == line:
            return
    pytest.fail(f"the child exited before printing {line!r}")


@pytest.fixture
def tenant_id(clean_db: str) -> str:
    with create_pool(clean_db, min_size=1, max_size=1) as pool:
        return PostgresTenantRepository(pool).create(new_tenant()).id


@pytest.mark.parametrize("style", ["atexit", "with", "async"])
def test_sigterm_handled_as_servers_do_loses_nothing(
    clean_db: str, tenant_id: str, style: str
) -> None:
    # 1,050 records: ten full batches written, 50 pending for an hour's max_delay.
    with child_process(clean_db, tenant_id, 1050, style) as child:
        wait_for_line(child, "submitted")
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 0
    requests = stored_requests(clean_db)
    assert sorted(requests) == sorted(f"r{i}" for i in range(1050))


@pytest.mark.parametrize("how", ["SIGKILL", "unhandled SIGTERM"])
def test_a_kill_without_a_spool_loses_what_was_pending(
    clean_db: str, tenant_id: str, how: str
) -> None:
    style = "unhandled" if how == "unhandled SIGTERM" else "atexit"
    with child_process(clean_db, tenant_id, 1050, style) as child:
        wait_for_line(child, "submitted")
        wait_until(
            lambda: len(stored_requests(clean_db)) == 1000, "the full batches are in"
        )
        if how == "SIGKILL":
            child.kill()
        else:
            child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) < 0  # killed by the signal
    assert len(stored_requests(clean_db)) == 1000  # the 50 pending are lost


def test_sigkill_with_a_spool_loses_no_record_whose_submit_returned(
    clean_db: str, tenant_id: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    with child_process(clean_db, tenant_id, 100_000, "count", spool) as child:
        assert child.stdout is not None
        returned = 0
        for line in child.stdout:
            returned = int(line)
            if returned >= 1550:
                child.kill()  # mid-stream: submits are still going on
                break
        child.wait(timeout=60)
        for line in child.stdout:  # printed before the kill, read after it
            if line.strip().isdigit():
                returned = max(returned, int(line))
    before = len(stored_requests(clean_db))
    # Some were pending at the kill (all but never: batches of 100 lag behind).
    assert before <= returned
    with (
        create_pool(clean_db, min_size=1, max_size=2) as pool,
        UsageWriter(PostgresUsageRepository(pool), spool=spool) as writer,
    ):
        writer.flush(timeout=60)
        replayed = writer.stats().submitted
        assert replayed >= returned - before
    requests = stored_requests(clean_db)
    assert len(requests) == len(set(requests))  # nothing twice
    assert {f"r{i}" for i in range(returned)} <= set(requests)
    emptied = Spool(spool)  # what was written is gone from the spool
    try:
        assert emptied.pending == []
        assert len(list(spool.glob("*.log"))) == 1  # the new, live segment
    finally:
        emptied.close()


def test_close_during_an_outage_keeps_the_records_in_the_spool(
    tmp_path: Path,
) -> None:
    tenants = InMemoryTenantRepository()
    tenant = tenants.create(new_tenant())
    usage: Any = Switch(InMemoryUsageRepository(tenants))
    usage.down = True
    writer = UsageWriter(usage, max_delay=0, spool=tmp_path)
    for i in range(5):
        writer.submit(record(tenant.id, f"r{i}"))
    with pytest.raises(StoreUnavailable):
        writer.close(timeout=0.05)
    usage.down = False
    with UsageWriter(usage, spool=tmp_path) as second:
        assert second.stats().submitted == 5
    assert second.stats().written == 5
    assert sorted(r.request_id for b in usage.batches for r in b) == [
        f"r{i}" for i in range(5)
    ]


@pytest.mark.parametrize("damage", ["cut short", "garbled"])
def test_a_torn_last_record_is_skipped_and_counted(tmp_path: Path, damage: str) -> None:
    tenant_id = str(uuid.uuid4())
    records = [
        usage_for_write(record(tenant_id, f"r{i}"), datetime.now(UTC)) for i in range(3)
    ]
    spool = Spool(tmp_path)
    for r in records:
        spool.append(r)
    spool.close()
    (segment,) = tmp_path.glob("*.log")
    first, second, third = (len(encode(r)) for r in records)
    with segment.open("r+b") as file:
        if damage == "cut short":  # the crash came in the middle of the last write
            file.truncate(first + second + third // 2)
        else:
            file.seek(first + second + third - 3)
            file.write(b"???")
    again = Spool(tmp_path)
    try:
        assert again.pending == records[:2]
        assert again.skipped == 1
    finally:
        again.close()
    usage = InMemoryUsageRepository(InMemoryTenantRepository())
    with UsageWriter(usage, spool=tmp_path) as writer:  # the writer says so too
        stats = writer.stats()
        assert (stats.submitted, stats.spool_skipped) == (2, 1)


def test_a_segment_emptied_in_place_replays_only_what_came_after(
    tmp_path: Path,
) -> None:
    # The emptied segment is zeroed as far as it was written: the shorter log
    # written over it afterwards ends where it ends, not in the old frames.
    tenant_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append(usage_for_write(record(tenant_id, f"old-{i}"), now))
    spool.acknowledge(5)
    later = [usage_for_write(record(tenant_id, f"r{i}"), now) for i in range(2)]
    for r in later:
        spool.append(r)
    spool.close()
    again = Spool(tmp_path)
    try:
        assert (again.pending, again.skipped) == (later, 0)
    finally:
        again.close()


def test_two_live_writers_on_one_spool_are_refused(tmp_path: Path) -> None:
    usage = InMemoryUsageRepository(InMemoryTenantRepository())
    with UsageWriter(usage, spool=tmp_path):
        with pytest.raises(InvalidInput) as info:
            UsageWriter(usage, spool=tmp_path)
        assert info.value.field == "spool"
    with UsageWriter(usage, spool=tmp_path):  # released by close
        pass


@given(
    request_id=st.text(min_size=1, max_size=255).filter(
        lambda t: t.strip() and "\x00" not in t
    ),
    model=st.text(max_size=255).filter(lambda t: "\x00" not in t),
    tokens=st.integers(0, 2**31 - 1),
    cost=s.valid_money,
    cached=st.booleans(),
    timestamp=s.instants,
)
def test_every_record_round_trips_through_the_spool_format(
    request_id: str, model: str, tokens: int, cost: Any, cached: bool, timestamp: Any
) -> None:
    try:
        stamped = usage_for_write(
            record(
                str(uuid.uuid4()),
                request_id,
                model=model,
                input_tokens=tokens,
                cost_usd=cost,
                cached=cached,
                timestamp=timestamp,
            )
        )
    except InvalidInput:
        assume(False)  # lone surrogates: never submitted, so never spooled
        raise
    frame = encode(stamped)
    assert decode(frame[8:]) == stamped
