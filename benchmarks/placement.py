"""CPU placement of the benchmark client and the PostgreSQL server, and undoing it.

Where the client and the server run matters more here than any driver choice: on two
vCPUs a round trip between them costs ~65 µs more than within one. `Placement` pins
every thread of this process to one CPU (`os.sched_setaffinity`) and the server — its
postmaster, so that backends forked later inherit the mask, and every process listed
in `pg_stat_activity`, found from `pg_backend_pid()` — with `taskset -a -p -c` to the
same CPU ("same") or to a fixed other one ("split"). When the server is not local or
taskset is refused, the server stays unpinned and the report says so. `restore()`
gives everything back its original mask.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import psycopg

__all__ = ["Placement", "PlacementMode"]

PlacementMode = Literal["same", "split", "none"]


def _threads() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


def _is_postgres(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"postgres" in cmdline


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


class Placement:
    """Pin the client now; pin the server with `pin_server(conninfo)` once it runs."""

    def __init__(self, mode: PlacementMode) -> None:
        self.mode = mode
        self.client_cpu: int | None = None
        self.server_cpu: int | None = None
        self.server_status = "unpinned (--placement none)"
        self.server_pids: set[int] = set()
        self._client_masks: dict[int, set[int]] = {}
        self._server_masks: dict[int, set[int]] = {}
        self._server_default: set[int] | None = None
        self._server_failed = mode == "none"
        if mode == "none":
            return
        # The last CPU: CPU 0 tends to take more of the interrupts.
        allowed = sorted(os.sched_getaffinity(0))
        self.client_cpu = allowed[-1]
        self.server_cpu = allowed[0] if mode == "split" else allowed[-1]
        for tid in _threads():
            try:
                self._client_masks[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {self.client_cpu})
            except OSError:
                continue
        self.server_status = "not yet pinned"

    def pin_server(self, conninfo: str) -> None:
        """Pin the server's postmaster and every current backend (idempotent)."""
        if self._server_failed or self.server_cpu is None:
            return
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                assert row is not None
                backend: int = row[0]
                pids = {
                    r[0]
                    for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL"
                    )
                }
                if not _is_postgres(backend):
                    self._fail("server not local")
                    return
                postmaster = _parent(backend)
                if postmaster is not None and _is_postgres(postmaster):
                    pids.add(postmaster)
                pids = {p for p in pids if _is_postgres(p)}
                for pid in sorted(pids - self.server_pids):
                    refused = self._pin(pid, self.server_cpu)
                    if refused:
                        self._fail(refused)
                        return
                self.server_pids |= pids
                if os.sched_getaffinity(backend) != {self.server_cpu}:
                    self._fail("affinity did not take")
                    return
        except (psycopg.Error, OSError) as exc:
            self._fail(f"{type(exc).__name__}")
            return
        self.server_status = "pinned"

    def _pin(self, pid: int, cpu: int) -> str | None:
        """Pin one process; the reason when refused."""
        try:
            mask = os.sched_getaffinity(pid)
        except OSError:
            return None  # gone already
        self._server_masks.setdefault(pid, mask)
        if self._server_default is None:
            self._server_default = mask
        taskset = shutil.which("taskset")
        if taskset is None:
            try:
                os.sched_setaffinity(pid, {cpu})
            except OSError as exc:
                return f"sched_setaffinity: {exc.strerror}"
            return None
        done = subprocess.run(
            [taskset, "-a", "-p", "-c", str(cpu), str(pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 and os.path.exists(f"/proc/{pid}"):
            reason = done.stderr.strip().splitlines()[-1:] or ["failed"]
            return f"taskset: {reason[0]}"
        return None

    def _fail(self, reason: str) -> None:
        self._server_failed = True
        self.server_status = f"unpinned ({reason})"

    def describe(self) -> str:
        if self.mode == "none":
            return "unpinned (--placement none): client and server placed by the OS"
        where = "the same CPU" if self.server_cpu == self.client_cpu else "another CPU"
        server = (
            f"server pinned to CPU {self.server_cpu} ({where})"
            if self.server_status == "pinned"
            else f"server {self.server_status}"
        )
        return f"client pinned to CPU {self.client_cpu}; {server}"

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "client_cpu": self.client_cpu,
            "server_cpu": self.server_cpu if self.server_status == "pinned" else None,
            "server": self.server_status,
            "description": self.describe(),
        }

    def restore(self, conninfo: str | None) -> None:
        """Give the client threads and the server processes their masks back."""
        for tid, mask in self._client_masks.items():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                continue
        # Threads started after pinning inherited the pin.
        default = next(iter(self._client_masks.values()), None)
        if default is not None:
            for tid in _threads():
                if tid not in self._client_masks:
                    try:
                        os.sched_setaffinity(tid, default)
                    except OSError:
                        continue
        if not self._server_masks:
            return
        pids = dict(self._server_masks)
        if conninfo is not None and self._server_default is not None:
            # Backends forked after the postmaster was pinned inherited its pin.
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    for (pid,) in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL"
                    ):
                        pids.setdefault(pid, self._server_default)
            except psycopg.Error:
                pass
        for pid, mask in pids.items():
            if _is_postgres(pid):
                try:
                    os.sched_setaffinity(pid, mask)
                except OSError:
                    continue
