"""`migrate up` on a live database: how long the gateway stalls while it runs.

Two databases, loaded alike at version 1 with the Go service's schema and as many
usage rows of Go-era data as the run's largest cost tenant has (1,000,000 in a full
run; tests/online_load.py: NULLs, duplicates), are each migrated to their latest
version while a loop in another thread authenticates through
`PostgresTenantRepository` and records a request with the Go service's
INSERT, round after round. A sample is the longest round of that loop during the
whole migration (one figure per migration, repeated: there is one migration to
time, not a series):
- ours: the shipped migrations (`migrations/`): batches, CONCURRENTLY, lock_timeout;
- reference: the former files, kept in `benchmarks/old_migrations/`, which held
  ACCESS EXCLUSIVE on both tables for a table rewrite, a dedupe and an index build,
  then SHARE on usage_records for the totals;
- floor: the longest round of the same loop over the same time with no migration
  running (on the migrated database): what the loop stalls by itself.
The loop must see no error and every migration must finish, else the scenario
fails. The notes give each migration's wall time and the loop's rounds meanwhile.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.measure import CheckFailed, Sampled, Series, Variant
from benchmarks.scenario import Context, Scenario
from tenantstore import migrate
from tests.online_load import OnlineRun, ServingLoop, load_go_era, migrate_online
from tests.pgserver import scratch_database

__all__ = ["SCENARIOS"]

OLD_MIGRATIONS = Path(__file__).resolve().parent / "old_migrations"


def _repeated(figure: float) -> Series:
    def series(n: int) -> Sampled:
        return Sampled([figure] * n, [0.0] * n, n)

    return series


def _run(
    context: Context, stack: contextlib.ExitStack, role: str, source: Path | None
) -> OnlineRun:
    rows = context.sizes.cost_rows[2]
    url = stack.enter_context(scratch_database(f"tenantstore_bench_migrate_{role}"))
    context.data.progress.step(f"migrate-online: loading {rows:,} Go-era rows ({role})")
    migrate.up(url, 1, source=source)
    load_go_era(url, rows)
    context.pin()
    context.data.progress.step(f"migrate-online: migrate up under load ({role})")
    run = migrate_online(url, source)
    if run.errors:
        raise CheckFailed(f"the serving loop failed during {role}: {run.errors[0]!r}")
    if not run.applied or run.rounds == 0:
        raise CheckFailed(f"{role}: nothing migrated, or the loop never ran")
    return run


def _idle(url: str, seconds: float) -> float:
    loop = ServingLoop(url)
    loop.start()
    try:
        deadline = time.monotonic() + 60
        while loop.rounds == 0 and not loop.errors and time.monotonic() < deadline:
            time.sleep(0.001)
        loop.longest = 0.0
        time.sleep(seconds)
        longest = loop.longest
    finally:
        loop.stop()
    if loop.errors:
        raise CheckFailed(f"the serving loop failed: {loop.errors[0]!r}")
    return longest


@contextlib.contextmanager
def migrate_online_scenario(context: Context) -> Iterator[list[Variant]]:
    with contextlib.ExitStack() as stack:
        ours = _run(context, stack, "ours", None)
        old = _run(context, stack, "old", OLD_MIGRATIONS)
        idle_url = stack.enter_context(
            scratch_database("tenantstore_bench_migrate_idle")
        )
        migrate.up(idle_url, 1)
        load_go_era(idle_url, min(context.sizes.cost_rows[2], 10_000))
        migrate.up(idle_url)
        idle = _idle(idle_url, min(ours.seconds, 10.0))

    def note(run: OnlineRun) -> str:
        return f"migration {run.seconds:.1f} s, loop {run.rounds:,} rounds meanwhile"

    yield [
        Variant(
            "shipped migrations: batches, CONCURRENTLY, lock_timeout",
            "ours",
            _repeated(ours.longest_stall),
            note=note(ours),
        ),
        Variant(
            "former all-at-once migrations (benchmarks/old_migrations)",
            "reference",
            _repeated(old.longest_stall),
            note=note(old),
        ),
        Variant(
            "no migration running (the loop's own longest round)",
            "floor",
            _repeated(idle),
        ),
    ]


SCENARIOS = (
    Scenario(
        "migrate-online",
        "longest stall of a serving loop during migrate up, {s.cost_rows[2]:,} rows",
        migrate_online_scenario,
        quick=False,
    ),
)
