"""A PNG of a run: latency per operation, ours against its references, log scale.

One horizontal bar per variant, grouped by scenario: the bar is the median, the
whisker reaches the p99, ours is drawn in a strong colour and the references in
quieter ones, and each reference is labelled with ours ÷ it. matplotlib's Agg
backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import Run, format_ratio, format_time

__all__ = ["write_plot"]

COLOURS = {
    "ours": "#1f5fbf",
    "floor": "#3a9a5b",
    "reference": "#9a9a9a",
    "peer": "#e08a2c",
}
NAMES = {
    "ours": "ours (tenantstore)",
    "floor": "floor (hand-written, same pool / dict)",
    "reference": "reference",
    "peer": "peer library",
}


def write_plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [s for s in run.scenarios if s.rows]
    n_rows = sum(len(s.rows) for s in measured)
    height = 1.2 + 0.27 * n_rows + 0.38 * len(measured)
    fig: Any
    ax: Any
    fig, ax = plt.subplots(figsize=(11, height), dpi=110)

    y = 0.0
    ticks: list[float] = []
    labels: list[str] = []
    low = min(r.stats.median for s in measured for r in s.rows)
    high = max(r.stats.p99 for s in measured for r in s.rows)
    for s in measured:
        ax.text(
            low / 3.2,
            y - 0.15,
            f"{s.name} — {s.title}",
            fontsize=8.5,
            fontweight="bold",
            va="bottom",
            ha="left",
        )
        y += 0.55
        for r in s.rows:
            st = r.stats
            ax.barh(
                y,
                st.median,
                left=0,
                height=0.7,
                color=COLOURS[r.role],
                edgecolor="none",
                alpha=1.0 if r.role == "ours" else 0.85,
            )
            ax.plot([st.median, st.p99], [y, y], color="#333333", lw=0.8)
            ax.plot([st.p99], [y], marker="|", color="#333333", ms=6)
            text = format_time(st.median)
            if r.ratio is not None:
                text += f"   ours ÷ this = {format_ratio(r.ratio, r.target)}"
                if r.passed is not None:
                    text += f" ({r.target.text if r.target else ''} "
                    text += "met)" if r.passed else "MISSED)"
            ax.text(
                st.p99 * 1.12,
                y,
                text,
                va="center",
                fontsize=7.5,
                color="#b00020" if r.passed is False else "#222222",
            )
            ticks.append(y)
            labels.append(r.label)
            y += 1.0
        y += 0.45

    ax.set_xscale("log")
    ax.set_xlim(low / 3.5, high * 45)
    ax.set_ylim(y - 0.3, -0.6)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7.5)
    ax.set_xlabel("time per operation (median bar, whisker to p99), log scale")
    ax.xaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _: format_time(v))
    )
    ax.grid(axis="x", which="major", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [
        matplotlib.patches.Patch(color=COLOURS[role], label=NAMES[role])
        for role in ("ours", "floor", "reference", "peer")
    ]
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=4,
        fontsize=7.5,
        frameon=False,
    )
    fig.suptitle(
        f"tenantstore benchmarks · {run.mode} mode · {run.placement['description']}",
        fontsize=9,
    )
    waiting = [s.name for s in run.scenarios if not s.rows]
    if waiting:
        fig.text(
            0.01,
            0.005,
            "not measured: " + ", ".join(waiting),
            fontsize=7,
            color="#666666",
            va="bottom",
        )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
