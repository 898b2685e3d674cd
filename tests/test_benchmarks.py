"""The benchmark suite keeps working: a tiny run of every scenario, results checked.

No timing is asserted (timings belong to the suite's report): only that every
scenario ran — or, for one that needs a class tenantstore does not export yet, that
it says so — with positive figures for every row and every result checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tenantstore
from benchmarks import main
from benchmarks.scenario import missing
from benchmarks.suite import SCENARIOS


def test_tiny_run_reports_every_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, chart = tmp_path / "bench.json", tmp_path / "bench.png"

    # No pinning: with DATABASE_URL the server may be shared (CI's own).
    status = main(
        [
            "--tiny",
            "--quiet",
            "--placement",
            "none",
            "--json",
            str(results),
            "--plot",
            str(chart),
        ]
    )

    report = json.loads(results.read_text())
    scenarios = {s["name"]: s for s in report["scenarios"]}
    assert list(scenarios) == [s.name for s in SCENARIOS]
    errors = {n: s["error"] for n, s in scenarios.items() if s["error"]}
    assert not errors
    assert status == 0
    for scenario in SCENARIOS:
        result = scenarios[scenario.name]
        if missing(scenario):
            assert not result["measured"]
            assert result["unavailable"]
            assert not result["rows"]
            continue
        assert result["measured"], scenario.name
        rows = result["rows"]
        assert [r["role"] for r in rows].count("ours") == 1, scenario.name
        assert len(rows) >= 2, scenario.name
        for row in rows:
            for figure in ("median_us", "p99_us", "mean_us", "ops_per_s"):
                assert row[figure] > 0, (scenario.name, row["label"], figure)
            assert row["samples"] > 0
            assert row["checked"] == row["ops"] > 0, (scenario.name, row["label"])
            if row["role"] == "ours":
                assert row["ratio"] is None
            else:
                assert row["ratio"] > 0
            if row["target"] is not None:
                assert isinstance(row["target"]["met"], bool)
    assert report["checked"] == sum(
        r["checked"] for s in report["scenarios"] for r in s["rows"]
    )
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    table = capsys.readouterr().out
    assert "targets:" in table
    assert report["placement"]["description"] in table


def test_scenarios_requiring_missing_classes_say_which() -> None:
    # The cache and async-cache rows plug in by themselves once the names exist.
    for scenario in SCENARIOS:
        for name in scenario.requires:
            assert name.isidentifier()
            assert (name in missing(scenario)) != hasattr(tenantstore, name)
