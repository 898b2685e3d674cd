"""``python -m tenantstore migrate ...``: output, exit status, errors as one line.

Most tests call `main` in-process and read captured output; one runs the module in a
subprocess to prove the entry point and the absence of a traceback end to end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import tenantstore
from tenantstore import migrate
from tenantstore.cli import main
from tests.test_migrate import scratch_db

MIGRATIONS = migrate.available()
LATEST = MIGRATIONS[-1].version


@pytest.fixture
def fresh_db(pg_server_url: str) -> Iterator[str]:
    with scratch_db(pg_server_url) as url:
        yield url


@pytest.fixture
def no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


def closed_port_url() -> str:
    """A URL nobody listens on: a port the kernel just handed out and took back."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/nowhere?connect_timeout=5"


@pytest.mark.usefixtures("no_env_url")
def test_status_of_a_new_database(
    fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "status", "--database-url", fresh_db]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "version: none",
        f"latest:  {LATEST}",
        "pending: "
        + ", ".join(m.filename("up")[: -len(".up.sql")] for m in MIGRATIONS),
    ]


def test_lock_timeout_and_retries_are_the_operators_to_set(
    fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate.up(fresh_db, 1)
    db = ["--database-url", fresh_db]
    assert main(["migrate", "up", "--lock-timeout", "0", *db]) == 2
    assert "lock_timeout" in capsys.readouterr().err
    with psycopg.connect(fresh_db) as holder:
        # A long transaction holding a lock 002 needs: the step gives up after
        # 50 ms, once, and says which flags would wait longer.
        holder.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        argv = ["migrate", "up", "--lock-timeout", "0.05", "--lock-retries", "0"]
        assert main([*argv, *db]) == 1
        err = capsys.readouterr().err
        assert "in 1 attempts" in err
        assert "--lock-timeout" in err
        holder.rollback()
    assert migrate.status(fresh_db).version == 1
    assert not migrate.status(fresh_db).dirty
    assert main(["migrate", "up", "--lock-retries", "0", *db]) == 0


def test_up_then_status_shows_the_latest_version(
    fresh_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    assert main(["migrate", "up"]) == 0
    out = capsys.readouterr().out
    assert "".join(f"applied {m.version}\n" for m in MIGRATIONS) in out
    # The NOTICE 005 raises reaches the operator.
    assert (
        "005_usage_dedupe.up.sql: NOTICE: moved 0 duplicate usage_records row(s)" in out
    )

    assert main(["migrate", "status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"version: {LATEST}",
        f"latest:  {LATEST}",
        "pending: none",
    ]
    assert main(["migrate", "up"]) == 0
    assert "nothing to apply" in capsys.readouterr().out


@pytest.mark.usefixtures("no_env_url")
def test_down_steps_all_and_force(
    fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--database-url", fresh_db]
    assert main(["migrate", "up", "--target", "2", *db]) == 0
    assert main(["migrate", "down", *db]) == 0
    assert "rolled back 2\n" in capsys.readouterr().out
    assert main(["migrate", "down", "--all", *db]) == 0
    assert capsys.readouterr().out.endswith("rolled back 1\n")

    assert main(["migrate", "up", *db]) == 0
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET dirty = true")
    capsys.readouterr()
    assert main(["migrate", "status", *db]) == 0
    assert f"version: {LATEST} (DIRTY" in capsys.readouterr().out
    assert main(["migrate", "up", *db]) == 1
    err = capsys.readouterr().err
    assert f"dirty at version {LATEST}" in err
    assert "force" in err

    assert main(["migrate", "force", str(LATEST), *db]) == 0
    assert main(["migrate", "status", *db]) == 0
    assert f"version: {LATEST}\n" in capsys.readouterr().out
    assert main(["migrate", "force", "-1", *db]) == 0
    assert main(["migrate", "status", *db]) == 0
    assert "version: none\n" in capsys.readouterr().out


@pytest.mark.usefixtures("no_env_url")
def test_missing_database_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["migrate", "up"]) == 2
    err = capsys.readouterr().err
    assert "--database-url" in err
    assert "DATABASE_URL" in err


@pytest.mark.usefixtures("no_env_url")
def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    url = closed_port_url()
    assert main(["migrate", "down", "--steps", "0", "--database-url", url]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["migrate", "sideways"]) == 2
    assert main(["migrate", "force", "--database-url", url]) == 2
    assert main(["--help"]) == 0


@pytest.mark.usefixtures("no_env_url")
def test_unreachable_database_fails_with_a_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["migrate", "status", "--database-url", closed_port_url()]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tenantstore: error: cannot connect to PostgreSQL")
    assert "Traceback" not in err


def test_module_entry_point_in_a_subprocess() -> None:
    package_parent = Path(tenantstore.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(package_parent), env.get("PYTHONPATH")) if p
    )
    command = [sys.executable, "-m", "tenantstore", "migrate", "status"]

    missing = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 2
    assert "DATABASE_URL" in missing.stderr

    unreachable = subprocess.run(
        [*command, "--database-url", closed_port_url()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 1
    assert "cannot connect to PostgreSQL" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert unreachable.stdout == ""
