"""The budget guard across OS processes sharing one PostgreSQL, one killed mid-run.

Four processes of eight threads (one of them: eight asyncio tasks on the async
guard) each (tests/budget_worker.py) reserve and settle
against one tenant until it is refused with nothing held. One of them is SIGKILLed
while it holds reservations: its lease stops being renewed and stops counting once
`LEASE_TIME` has passed, and the others then spend what it held. With every settle
at or below its estimate, the month's spend ends within the budget and less than
the largest estimate below it, and each alert level fired exactly once among the
four processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg

from tenantstore import PostgresTenantRepository, Tenant, create_pool, hash_api_key
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[1]
LEASE_TIME = 2.0  # seconds; the default is 10
BUDGET = Decimal("12.00")
LARGEST_ESTIMATE = Decimal("0.05")
# The second process runs eight asyncio tasks on AsyncBudgetGuard; the others
# eight threads on BudgetGuard (the first is the one killed).
MODES = ["guard", "async", "guard", "guard"]


def _count(url: str, sql: str, *params: object) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])


def _reap(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _amount(url: str, holder: str) -> Decimal:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT amount FROM budget_leases WHERE holder = %s", (holder,)
        ).fetchone()
        return Decimal(0) if row is None else Decimal(row[0])


class LowestLease:
    """A thread reading the lowest lease amount in the book, over and over, on its
    own connection, until the block ends (`lowest`: None if it saw no lease)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lowest: Decimal | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute("SELECT min(amount) FROM budget_leases").fetchone()
                if row is not None and row[0] is not None:
                    found = Decimal(row[0])
                    if self.lowest is None or found < self.lowest:
                        self.lowest = found

    def __enter__(self) -> LowestLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_four_processes_spend_one_budget_exactly(clean_db: str, tmp_path: Path) -> None:
    url = clean_db
    with create_pool(url, min_size=1, max_size=2) as pool:
        tenant = PostgresTenantRepository(pool).create(
            Tenant(name="shared", api_key_hash=hash_api_key("k"), budget_usd=BUDGET)
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    outputs = [tmp_path / f"worker-{i}.out" for i in range(4)]
    # They start together (each waits for this file): on a loaded machine one
    # started late would find the budget spent before it settled anything.
    go = tmp_path / "go"
    children = []
    for i, output in enumerate(outputs):
        with output.open("w") as sink:
            children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.budget_worker",
                        url,
                        tenant.id,
                        f"p{i}",
                        "8",
                        str(LEASE_TIME),
                        MODES[i],
                        str(go),
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=sink,
                )
            )
    with contextlib.ExitStack() as stack:
        stack.callback(_reap, children)
        wait_until(
            lambda: all("ready" in out.read_text() for out in outputs),
            "every process is ready",
        )
        watch = stack.enter_context(LowestLease(url))
        go.touch()
        victim = children[0]
        holder = outputs[0].read_text().split("\n")[0].split()[1]
        leased = Decimal(0)

        def holding() -> bool:
            # Settled some requests, and holds a share of the budget now (a lean
            # lease, one that holds only what is reserved, is 0 between requests).
            nonlocal leased
            settled = _count(
                url, "SELECT count(*) FROM usage_records WHERE request_id LIKE 'p0-%%'"
            )
            leased = _amount(url, holder)
            return settled >= 20 and leased > 0

        # Kill the first once it has settled some requests, while it holds others.
        wait_until(holding, "the first process has settled 20 requests and holds")
        victim.send_signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        victim.wait()
        assert leased > 0  # it held a share of the budget when it died
        # Its lease stops counting within LEASE_TIME (a lease step deletes it, or
        # it is expired and no snapshot counts it).
        # A dead process renews nothing: its lease stops counting by the expiry
        # it last wrote, at most LEASE_TIME after it died (the guards compare
        # expires_at with their clocks; a lease step deletes the row after).
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT max(expires_at) FROM budget_leases WHERE holder = %s",
                (holder,),
            ).fetchone()
        assert row is not None
        if row[0] is not None:
            assert row[0] <= killed_at + timedelta(seconds=LEASE_TIME)
        wait_until(
            lambda: (
                _count(
                    url,
                    "SELECT count(*) FROM budget_leases WHERE holder = %s"
                    " AND expires_at > %s",
                    holder,
                    datetime.now(UTC),
                )
                == 0
            ),
            "the killed process's lease has expired",
        )
        for child in children[1:]:
            assert child.wait(timeout=60) == 0
    # No lease in the book ever fell below 0: the others counted every hold (a
    # refused lease step once cut a lease below what its process still held).
    assert watch.lowest is not None
    assert watch.lowest >= 0
    lines = [line for out in outputs for line in out.read_text().splitlines()]
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(cost_usd), 0) FROM usage_records WHERE tenant_id = %s",
            (tenant.id,),
        ).fetchone()
    assert row is not None
    spent: Decimal = row[0]
    assert BUDGET - LARGEST_ESTIMATE <= spent <= BUDGET
    alerts = sorted(line.split()[1] for line in lines if line.startswith("alert"))
    # Every settle costs whole cents and the survivors go on a cent at a time
    # until nothing is held anywhere: the budget is spent to the cent.
    assert spent == BUDGET
    assert alerts == ["critical", "exceeded", "warning"]
    assert sum(1 for line in lines if line.startswith("done")) == 3
    # The async guard's process took its part of the budget too.
    (async_done,) = [
        line for line in outputs[1].read_text().splitlines() if line.startswith("done")
    ]
    assert int(async_done.split()[1]) > 0
