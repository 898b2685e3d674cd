"""Results of a run, as the printed table and as JSON.

Every scenario has one row for ours and one per reference; a reference row's ratio is
ours ÷ that row (medians), so below 1 means ours is faster, and its target, when it
has one, is met when the ratio is at most the target's limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Role, Stats, Target

__all__ = [
    "Row",
    "Run",
    "ScenarioResult",
    "format_ratio",
    "format_time",
    "to_json",
    "write_json",
]


@dataclass(frozen=True)
class Row:
    label: str
    role: Role
    stats: Stats
    ratio: float | None  # ours ÷ this row; None on ours' own row
    target: Target | None = None
    note: str = ""
    # ours' median and p99 minus this row's (seconds); None on ours' own row
    over: tuple[float, float] | None = None

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        if self.target.over:
            return self.over is not None and self.target.met(self.over[0])
        return self.target.met(self.ratio)


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    unavailable: str | None = None  # why it did not run (not built yet)
    error: str | None = None  # why it failed (a wrong result, an exception)
    seconds: float = 0.0


@dataclass
class Run:
    mode: str
    started: str
    environment: dict[str, Any]
    placement: dict[str, Any]
    method: dict[str, Any]
    scenarios: list[ScenarioResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def targets(self) -> list[tuple[ScenarioResult, Row]]:
        return [(s, r) for s in self.scenarios for r in s.rows if r.passed is not None]

    @property
    def checked(self) -> int:
        return sum(r.stats.checked for s in self.scenarios for r in s.rows)


def format_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        us = seconds * 1e6
        return (
            f"{us:.2f} µs"
            if us < 10
            else f"{us:.1f} µs"
            if us < 100
            else f"{us:.0f} µs"
        )
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def format_ratio(ratio: float, target: Target | None) -> str:
    # One more digit where two would hide which side of the limit the ratio is on.
    if target is not None and f"{ratio:.2f}" == f"{target.limit:.2f}":
        return f"{ratio:.3f}x"
    return f"{ratio:.2f}x"


def _signed(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + format_time(abs(seconds))


def _over(over: tuple[float, float]) -> str:
    median, p99 = over
    return f"median {_signed(median)}, p99 {_signed(p99)}"


def _rate(ops: float) -> str:
    return f"{ops:,.0f}"


_HEAD = (
    f"{'variant':<48} {'role':<9} {'median':>9} {'p99':>9} {'ops/s':>9} "
    f"{'cpu/op':>9} {'ours÷row':>8}  target"
)


def format_table(run: Run) -> str:
    env = run.environment
    lines = [
        f"tenantstore benchmarks · {run.mode} mode · {run.started}",
        " · ".join(f"{k} {v}" for k, v in env.items() if k not in ("cpus", "server"))
        + f" · {env.get('cpus')} CPUs · server: {env.get('server')}",
        f"placement: {run.placement['description']}",
        (
            f"method: {run.method['rounds']} rounds, variants interleaved in "
            "alternating order, warm-up first, gc.collect() before each series; "
            f"{run.checked:,} results checked"
        ),
        (
            "ours÷row = ours' median ÷ this row's median (< 1: ours is faster); "
            "cpu/op = this process's CPU per call"
        ),
        (
            f"in-process rows time batches of {run.method['batch']} calls (p99 over "
            f"batch means); load average {env.get('load')}"
        ),
        "",
        _HEAD,
        "─" * len(_HEAD),
    ]
    for s in run.scenarios:
        lines.append(f"{s.name} — {s.title}")
        if s.unavailable:
            lines.append(f"  not measured: {s.unavailable}")
            continue
        if s.error:
            lines.append(f"  FAILED: {s.error}")
            continue
        for r in s.rows:
            st = r.stats
            ratio = "" if r.ratio is None else format_ratio(r.ratio, r.target)
            target = ""
            if r.target is not None and r.ratio is not None:
                target = f"{r.target.text} {'pass' if r.passed else 'MISS'}"
                if r.target.over and r.over is not None:
                    target += f" ({_over(r.over)})"
            lines.append(
                f"  {r.label:<46} {r.role:<9} {format_time(st.median):>9} "
                f"{format_time(st.p99):>9} {_rate(st.ops_per_s):>9} "
                f"{format_time(st.cpu_median):>9} {ratio:>8}  {target}".rstrip()
            )
    lines.append("─" * len(_HEAD))
    targets = run.targets
    missed = [(s, r) for s, r in targets if not r.passed]
    lines.append(f"targets: {len(targets) - len(missed)} of {len(targets)} met")
    for s, r in missed:
        if r.target is not None and r.target.over and r.over is not None:
            lines.append(
                f"  MISSED {s.name}: ours over {r.label}: {_over(r.over)}, "
                f"target {r.target.text}"
            )
        elif r.target is not None and r.ratio is not None:
            lines.append(
                f"  MISSED {s.name}: ours ÷ {r.label} = "
                f"{format_ratio(r.ratio, r.target)}, target {r.target.text}"
            )
    waiting = [s.name for s in run.scenarios if s.unavailable]
    if waiting:
        lines.append(f"not measured yet: {', '.join(waiting)}")
    failed = [s.name for s in run.scenarios if s.error]
    if failed:
        lines.append(f"FAILED: {', '.join(failed)}")
    lines.append(f"total {run.seconds:.0f} s")
    return "\n".join(lines)


def to_json(run: Run) -> dict[str, Any]:
    return {
        "suite": "tenantstore benchmarks",
        "format": 1,
        "mode": run.mode,
        "started": run.started,
        "seconds": round(run.seconds, 2),
        "environment": run.environment,
        "placement": run.placement,
        "method": run.method,
        "checked": run.checked,
        "targets": {
            "met": sum(1 for _, r in run.targets if r.passed),
            "missed": sum(1 for _, r in run.targets if not r.passed),
        },
        "scenarios": [
            {
                "name": s.name,
                "title": s.title,
                "measured": not (s.unavailable or s.error),
                "unavailable": s.unavailable,
                "error": s.error,
                "seconds": round(s.seconds, 2),
                "rows": [_row_json(r) for r in s.rows],
            }
            for s in run.scenarios
        ],
    }


def _row_json(r: Row) -> dict[str, Any]:
    st = r.stats
    return {
        "label": r.label,
        "role": r.role,
        "note": r.note,
        "median_us": st.median * 1e6,
        "p99_us": st.p99 * 1e6,
        "mean_us": st.mean * 1e6,
        "cpu_us": st.cpu_median * 1e6,
        "ops_per_s": st.ops_per_s,
        "samples": st.samples,
        "ops": st.ops,
        "checked": st.checked,
        "ratio": r.ratio,
        "over_median_us": None if r.over is None else r.over[0] * 1e6,
        "over_p99_us": None if r.over is None else r.over[1] * 1e6,
        "target": None
        if r.target is None
        else {
            "limit": r.target.limit,
            "text": r.target.text,
            "over": r.target.over,
            "met": r.passed,
        },
    }


def write_json(run: Run, path: Path) -> None:
    path.write_text(json.dumps(to_json(run), indent=2, ensure_ascii=False) + "\n")
