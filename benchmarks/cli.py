"""The command line: choose scenarios and a mode, run them, print and write results.

`main(argv)` starts (or finds) the server, places client and server on CPUs, runs
each selected scenario — set up, `measure`d, torn down — and prints the table;
`--json` and `--plot` write the same results for machines and for people. A scenario
that needs something tenantstore does not export yet is listed as not measured; one
that fails (a wrong result, an exception) is reported and makes the exit status 1.
Missed targets are findings, not failures: they are printed, and the status stays 0.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.data import Data, Sizes
from benchmarks.measure import Progress, Stats, Timing, Variant, measure
from benchmarks.placement import Placement
from benchmarks.report import Row, Run, ScenarioResult, format_table, write_json
from benchmarks.scenario import Context, Scenario, missing
from benchmarks.suite import SCENARIOS, by_name
from tests.pgserver import server_url

__all__ = ["MODES", "Mode", "main"]


@dataclass(frozen=True)
class Mode:
    name: str
    timing: Timing
    tenants: int
    list_tenants: int
    cost_rows: tuple[int, int, int]
    batch: int


MODES = {
    "full": Mode(
        "full",
        Timing(rounds=30, series_seconds=0.1, warmup_seconds=0.25, min_samples=1),
        tenants=10_000,
        list_tenants=1_000,
        cost_rows=(1_000, 100_000, 1_000_000),
        batch=200,
    ),
    "quick": Mode(
        "quick",
        Timing(rounds=16, series_seconds=0.05, warmup_seconds=0.12, min_samples=1),
        tenants=10_000,
        list_tenants=1_000,
        cost_rows=(1_000, 100_000, 1_000_000),
        batch=200,
    ),
    "tiny": Mode(
        "tiny",
        Timing(rounds=2, series_seconds=0.01, warmup_seconds=0.005, min_samples=2),
        tenants=300,
        list_tenants=100,
        cost_rows=(200, 2_000, 5_000),
        batch=50,
    ),
}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "tenantstore against the floor and its peers, side by side. Runs on "
            "DATABASE_URL if set, else on an embedded PostgreSQL."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="about a minute; skips the 1M-row sum"
    )
    size.add_argument(
        "--tiny", action="store_true", help="seconds, tiny data: a smoke test only"
    )
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        help="run this scenario only (repeat or comma-separate for more; see --list)",
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="write results")
    parser.add_argument("--plot", metavar="PATH", type=Path, help="write a PNG chart")
    parser.add_argument(
        "--placement",
        choices=("same", "split", "none"),
        default="same",
        help=(
            "pin client and server to the same CPU (default), to two different "
            "CPUs, or not at all"
        ),
    )
    parser.add_argument(
        "--list", action="store_true", help="list the scenarios and exit"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, profile ours and the floor with cProfile (stderr)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def select(args: argparse.Namespace, mode: Mode) -> list[Scenario]:
    if not args.only:
        return [s for s in SCENARIOS if s.quick or mode.name != "quick"]
    known = by_name()
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return [s for s in SCENARIOS if s.name in names]


def sizes_for(mode: Mode, scenarios: list[Scenario]) -> Sizes:
    # The largest usage tenant is loaded only when a scenario of that size runs.
    large = ("total-cost-1m", "migrate-online")
    biggest = mode.cost_rows[2] if any(s.name in large for s in scenarios) else 0
    return Sizes(
        tenants=mode.tenants,
        list_tenants=mode.list_tenants,
        cost_rows=(mode.cost_rows[0], mode.cost_rows[1], biggest),
    )


def environment(url: str) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "PostgreSQL": row[0] if row else "?",
        "Python": platform.python_version(),
        "psycopg": version("psycopg"),
        "psycopg_pool": version("psycopg-pool"),
        "SQLAlchemy": version("sqlalchemy"),
        "asyncpg": version("asyncpg"),
        "PyPika": version("pypika"),
        "tenantstore": version("tenantstore"),
        "cpus": len(os.sched_getaffinity(0)),
        "server": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        "load": _load(),
    }


def _load() -> str:
    # Other processes on the machine compete with client and server for CPUs.
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def profile(variants: Sequence[Variant], stats: list[Stats], name: str) -> None:
    """Run ours and the floor once more under cProfile; print where time goes."""
    for v, st in zip(variants, stats, strict=True):
        if v.role not in ("ours", "floor"):
            continue
        samples = max(1, min(20_000, int(0.3 / st.mean / max(1, st.ops // st.samples))))
        profiler = cProfile.Profile()
        profiler.enable()
        v.series(samples)
        profiler.disable()
        out = io.StringIO()
        figures = pstats.Stats(profiler, stream=out)
        print(
            f"\n── profile of {name} / {v.role}: {v.label}, {samples} samples "
            "(by own time; cProfile inflates Python-level calls) ──",
            file=sys.stderr,
        )
        figures.sort_stats("tottime").print_stats(18)
        print(out.getvalue(), file=sys.stderr)


def run_scenario(
    scenario: Scenario,
    ctx: Context,
    timing: Timing,
    progress: Progress,
    *,
    profiled: bool = False,
) -> ScenarioResult:
    title = scenario.title_for(ctx.sizes)
    absent = missing(scenario)
    if absent:
        return ScenarioResult(
            scenario.name,
            title,
            unavailable=f"tenantstore has no {', '.join(absent)} yet",
        )
    start = time.monotonic()
    try:
        with scenario.setup(ctx) as variants:
            ours = [v for v in variants if v.role == "ours"]
            assert len(ours) == 1, (
                f"{scenario.name}: one 'ours' variant, not {len(ours)}"
            )
            ctx.pin()
            stats = measure(
                variants,
                timing,
                progress=progress,
                name=scenario.name,
                after_warmup=ctx.pin,
            )
            if profiled:
                profile(variants, stats, scenario.name)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return ScenarioResult(
            scenario.name,
            title,
            error=f"{type(exc).__name__}: {exc}",
            seconds=time.monotonic() - start,
        )
    mine = next(st for v, st in zip(variants, stats, strict=True) if v.role == "ours")
    rows = [
        Row(
            label=v.label,
            role=v.role,
            stats=st,
            ratio=None if v.role == "ours" else mine.median / st.median,
            target=v.target,
            note=v.note,
            over=None
            if v.role == "ours"
            else (mine.median - st.median, mine.p99 - st.p99),
        )
        for v, st in zip(variants, stats, strict=True)
    ]
    return ScenarioResult(scenario.name, title, rows, seconds=time.monotonic() - start)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        sizes = sizes_for(MODES["full"], list(SCENARIOS))
        for s in SCENARIOS:
            note = "" if s.quick else "  (not in --quick)"
            print(f"{s.name:<18} {s.title_for(sizes)}{note}")
        return 0
    mode = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    scenarios = select(args, mode)
    sizes = sizes_for(mode, scenarios)
    progress = Progress(quiet=args.quiet)
    started = time.monotonic()
    if not os.environ.get("DATABASE_URL"):
        progress.step("starting an embedded PostgreSQL (set DATABASE_URL to use yours)")
    server = server_url()
    env = environment(server)
    # After the server starts: it must not inherit the client's pin.
    placement = Placement(args.placement)
    run = Run(
        mode=mode.name,
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        environment=env,
        placement={},
        method={
            "rounds": mode.timing.rounds,
            "series_seconds": mode.timing.series_seconds,
            "warmup_seconds": mode.timing.warmup_seconds,
            "batch": mode.batch,
            "order": "alternating (A B C, C B A, ...)",
            "gc": "gc.collect() before each series",
            "statistics": "median and p99 (nearest rank) of per-sample times; "
            "ops/s = 1 / mean",
        },
    )
    try:
        placement.pin_server(server)
        with Data(sizes, progress) as data:
            ctx = Context(sizes, data, placement, server, mode.batch)
            for i, scenario in enumerate(scenarios, 1):
                progress.step(
                    f"[{i}/{len(scenarios)}] {scenario.name}: "
                    f"{scenario.title_for(sizes)}"
                )
                run.scenarios.append(
                    run_scenario(
                        scenario, ctx, mode.timing, progress, profiled=args.profile
                    )
                )
    finally:
        run.placement = placement.as_json()
        placement.restore(server)
    run.seconds = time.monotonic() - started
    run.environment["load"] += f" at the start, {_load()} at the end"
    progress.step("done")
    print(format_table(run))
    if args.json:
        write_json(run, args.json)
    if args.plot:
        from benchmarks.plot import write_plot

        write_plot(run, args.plot)
    return 1 if any(s.error for s in run.scenarios) else 0
