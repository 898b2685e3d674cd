"""Generate `lib/tenantstore/_sync/` from `lib/tenantstore/_async/` with unasync.

Run `python tools/gen_sync.py` after editing `_async/`; `tests/test_twins.py` fails
when the committed `_sync/` differs from what this produces. Pass a directory to
write the output elsewhere (the test does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import unasync

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "lib" / "tenantstore" / "_async"
HEADER = "# Generated from _async/ by tools/gen_sync.py: do not edit by hand.\n"

# Async name -> sync name, on top of unasync's own (async/await, __aenter__, ...).
RENAMES = {
    "_async": "_sync",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncConnection": "Connection",
    "AsyncCursor": "Cursor",
    "AsyncTenantRepository": "TenantRepository",
    "AsyncUsageRepository": "UsageRepository",
    "AsyncPostgresTenantRepository": "PostgresTenantRepository",
    "AsyncPostgresUsageRepository": "PostgresUsageRepository",
    "AsyncAdminUserRepository": "AdminUserRepository",
    "AsyncPostgresAdminUserRepository": "PostgresAdminUserRepository",
    "aoffload": "offload",
    "AsyncCachedTenantRepository": "CachedTenantRepository",
    "AsyncTenantCacheListener": "TenantCacheListener",
    "AsyncIterator": "Iterator",
    "create_async_pool": "create_pool",
    "AEvent": "Event",
    "aspawn": "spawn",
    "aclose": "close",
    "acurrent": "current",
    "CancelledError": "CancelledError",
    "AFlight": "Flight",
    "AWatchdog": "Watchdog",
    "AWorker": "Worker",
    "aevent_wait": "event_wait",
    "astop_worker": "stop_worker",
    "aclosing": "closing",
    "AsyncUsageWriter": "UsageWriter",
    "_AsyncWriterCore": "_WriterCore",
    "aexit_flush": "exit_flush",
    "ALock": "Lock",
    "AsyncBudgetGuard": "BudgetGuard",
    "AsyncReservation": "Reservation",
    "_AsyncPostgresBook": "_PostgresBook",
    "_AsyncMemoryBook": "_MemoryBook",
    "AsyncStore": "Store",
    "AOpening": "Opening",
    "aopening": "opening",
    "AsyncInMemoryTenantRepository": "InMemoryTenantRepository",
    "AsyncInMemoryUsageRepository": "InMemoryUsageRepository",
    "AsyncInMemoryAdminUserRepository": "InMemoryAdminUserRepository",
}


def generate(target: Path) -> list[Path]:
    """Write the sync twins of every `_async/*.py` into `target`; return them."""
    target.mkdir(parents=True, exist_ok=True)
    rule = unasync.Rule(
        fromdir=str(SOURCE) + "/",
        todir=str(target) + "/",
        additional_replacements=RENAMES,
    )
    sources = sorted(str(p) for p in SOURCE.glob("*.py"))
    unasync.unasync_files(sources, [rule])
    outputs = sorted(target.glob("*.py"))
    for path in outputs:
        path.write_text(HEADER + path.read_text())
    ruff = shutil.which("ruff") or "ruff"
    subprocess.run(
        [ruff, "check", "--fix-only", "--quiet", *map(str, outputs)], check=False
    )
    subprocess.run([ruff, "format", "--quiet", *map(str, outputs)], check=True)
    return outputs


if __name__ == "__main__":
    out = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else ROOT / "lib" / "tenantstore" / "_sync"
    )
    for written in generate(out):
        print(
            written.relative_to(out.parent)
            if out.parent in written.parents
            else written
        )
