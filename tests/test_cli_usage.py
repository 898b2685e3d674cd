"""``tenantstore usage summary|prune``: the repository's summary, printed; pruning.

In-process through `main` (captured output), and once as ``python -m tenantstore``
in a subprocess. What the command prints is compared with what
`get_tenant_usage_summary` returns for the same window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

import tenantstore
from tenantstore import (
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    UsageRecord,
    UsageSummary,
)
from tests.test_cli_tenant import CliRunner

DAY0 = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
def cli(clean_db: str, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    return CliRunner(clean_db, capsys)


def new_tenant(pool: ConnectionPool) -> str:
    tenant_id = str(uuid.uuid4())
    PostgresTenantRepository(pool).create(
        Tenant(id=tenant_id, name="usage", api_key_hash=uuid.uuid4().hex * 2)
    )
    return tenant_id


def record_some(pool: ConnectionPool, tenant_id: str) -> None:
    """Three days, two models, odd costs (exact to the last digit)."""
    usage = PostgresUsageRepository(pool)
    for n in range(12):
        usage.record(
            UsageRecord(
                tenant_id=tenant_id,
                request_id=f"r-{n}",
                model=("gpt-4o", "claude")[n % 2],
                provider="p",
                input_tokens=n,
                output_tokens=2 * n + 1,
                cost_usd=Decimal("0.000000001") * (n + 1) + Decimal("0.1"),
                timestamp=DAY0 + timedelta(days=n % 3, minutes=n),
            )
        )


def as_json(item: UsageSummary) -> dict[str, object]:
    return {
        "day": item.day.isoformat(),
        "model": item.model,
        "records": item.records,
        "input_tokens": item.input_tokens,
        "output_tokens": item.output_tokens,
        "cost_usd": str(item.cost_usd),
    }


def test_summary_json_equals_the_repository_summary(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    tenant_id = new_tenant(pool)
    record_some(pool, tenant_id)
    usage = PostgresUsageRepository(pool)
    since, until = DAY0.date(), DAY0.date() + timedelta(days=2)
    expected = usage.get_tenant_usage_summary(tenant_id, since, until)
    assert len(expected) == 4  # two days, two models

    run = cli(
        "usage", "summary", tenant_id, "--since", "2026-03-30",
        "--until", "2026-04-01", "--json",
    )  # fmt: skip
    assert run.status == 0, run.err
    shown = json.loads(run.out)
    assert shown["days"] == [as_json(i) for i in expected]
    assert shown["totals"] == {
        "records": sum(i.records for i in expected),
        "input_tokens": sum(i.input_tokens for i in expected),
        "output_tokens": sum(i.output_tokens for i in expected),
        "cost_usd": str(sum((i.cost_usd for i in expected), Decimal(0))),
    }
    assert Decimal(shown["totals"]["cost_usd"]) == sum(
        (i.cost_usd for i in expected), Decimal(0)
    )
    assert set(shown["models"]) == {"gpt-4o", "claude"}
    assert shown["models"]["claude"]["records"] == sum(
        i.records for i in expected if i.model == "claude"
    )
    assert (shown["since"], shown["until"]) == ("2026-03-30", "2026-04-01")


def test_summary_table_shows_every_day_model_and_the_totals(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    tenant_id = new_tenant(pool)
    record_some(pool, tenant_id)
    expected = PostgresUsageRepository(pool).get_tenant_usage_summary(
        tenant_id, DAY0.date()
    )
    run = cli("usage", "summary", tenant_id, "--since", "2026-03-30")
    assert run.status == 0, run.err
    lines = run.out.splitlines()
    assert lines[0] == f"usage of {tenant_id} since 2026-03-30 (UTC days)"
    assert lines[1].split() == [
        "DAY", "MODEL", "RECORDS", "INPUT_TOKENS", "OUTPUT_TOKENS", "COST_USD",
    ]  # fmt: skip
    body = [line.split() for line in lines[2:]]
    assert body[: len(expected)] == [
        [
            i.day.isoformat(), i.model, str(i.records), str(i.input_tokens),
            str(i.output_tokens), str(i.cost_usd),
        ]
        for i in expected
    ]  # fmt: skip
    total = sum((i.cost_usd for i in expected), Decimal(0))
    assert body[-1] == [
        "total",
        str(sum(i.records for i in expected)),
        str(sum(i.input_tokens for i in expected)),
        str(sum(i.output_tokens for i in expected)),
        str(total),
    ]
    assert [row[:2] for row in body[len(expected) : -1]] == [
        ["total", "claude"],
        ["total", "gpt-4o"],
    ]


def test_summary_defaults_to_this_month_and_says_when_there_is_none(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    tenant_id = new_tenant(pool)
    record_some(pool, tenant_id)  # in 2026-03/04: not this month (unless it is)
    first = datetime.now(UTC).date().replace(day=1)
    run = cli("usage", "summary", tenant_id, "--json")
    assert run.status == 0, run.err
    shown = json.loads(run.out)
    assert shown["since"] == first.isoformat()
    expected = PostgresUsageRepository(pool).get_tenant_usage_summary(tenant_id, first)
    assert shown["days"] == [as_json(i) for i in expected]
    empty = cli("usage", "summary", tenant_id, "--since", "2030-01-01")
    assert empty.status == 0
    assert empty.out.splitlines()[1] == "no usage"


def test_unknown_tenant_and_bad_dates_are_clear_errors(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    missing = str(uuid.uuid4())
    run = cli("usage", "summary", missing)
    assert (run.status, run.out) == (1, "")
    assert run.err == f"tenantstore: error: no tenant {missing}\n"

    tenant_id = new_tenant(pool)
    for bad in ("2026-13-01", "yesterday", "2026-03-30T10:00", "20260330"):
        run = cli("usage", "summary", tenant_id, "--since", bad)
        assert run.status == 2
        assert "argument --since: must be a date, YYYY-MM-DD" in run.err
        run = cli("usage", "prune", "--before", bad)
        assert run.status == 2
        assert "argument --before: must be a date, YYYY-MM-DD" in run.err
    run = cli(
        "usage", "summary", tenant_id, "--since", "2026-04-02", "--until", "2026-04-01"
    )
    assert run.status == 2
    assert "--until must not be before --since" in run.err
    run = cli("usage", "summary", "not-a-uuid")
    assert run.status == 2
    assert "argument TENANT: must be a UUID" in run.err
    assert cli("usage", "prune").status == 2  # --before is required


def test_prune_deletes_old_rows_and_the_summary_keeps_counting_them(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    tenant_id = new_tenant(pool)
    record_some(pool, tenant_id)
    usage = PostgresUsageRepository(pool)
    before = usage.get_tenant_usage_summary(tenant_id, DAY0.date())
    cutoff = DAY0.date() + timedelta(days=2)
    old = [
        r
        for r in usage.get_tenant_usage(tenant_id, DAY0 - timedelta(days=1))
        if r.timestamp is not None
        and r.timestamp < datetime.combine(cutoff, time(), UTC)
    ]
    assert len(old) == 8

    run = cli("usage", "prune", "--before", cutoff.isoformat())
    assert run.status == 0, run.err
    assert run.out.startswith(
        "pruned 8 usage records from before 2026-04-01T00:00:00+00:00;"
    )
    assert "keep counting them" in run.out
    left = usage.get_tenant_usage(tenant_id, DAY0 - timedelta(days=1))
    assert len(left) == 4
    assert usage.get_tenant_usage_summary(tenant_id, DAY0.date()) == before
    again = cli("usage", "prune", "--before", cutoff.isoformat())
    assert again.out.startswith("pruned 0 usage records")


def test_usage_summary_in_a_subprocess(clean_db: str, pool: ConnectionPool) -> None:
    tenant_id = new_tenant(pool)
    record_some(pool, tenant_id)
    expected = PostgresUsageRepository(pool).get_tenant_usage_summary(
        tenant_id, date(2026, 3, 1)
    )
    package_parent = Path(tenantstore.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(package_parent), env.get("PYTHONPATH")) if p
    )
    env["DATABASE_URL"] = clean_db
    command = [sys.executable, "-m", "tenantstore", "usage", "summary", tenant_id]
    done = subprocess.run(
        [*command, "--since", "2026-03-01", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["days"] == [as_json(i) for i in expected]
    bad = subprocess.run(
        [*command, "--since", "March"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "must be a date" in bad.stderr
    assert "Traceback" not in bad.stderr
