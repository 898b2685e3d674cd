"""``tenantstore admin ...`` and ``tenantstore audit list``: real PostgreSQL.

`main` runs in-process; what it did is checked through the repositories on the
`pool` fixture (a user the CLI created must authenticate there) and in the audit
log (the actor the CLI passed must be there).
"""

from __future__ import annotations

import getpass
import io
import json

import psycopg_pool
import pytest
from psycopg_pool import ConnectionPool

from tenantstore import (
    InvalidCredentials,
    PostgresAdminUserRepository,
    PostgresTenantRepository,
)
from tenantstore import _passwords as passwords_module
from tests.test_cli import closed_port_url
from tests.test_cli_tenant import CliRunner, Run


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TENANTSTORE_CIPHER_KEYS", raising=False)
    monkeypatch.setattr(passwords_module, "_cost", 4)
    monkeypatch.setattr(getpass, "getuser", lambda: "os-user")


@pytest.fixture
def cli(clean_db: str, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    return CliRunner(clean_db, capsys)


def with_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def typed(monkeypatch: pytest.MonkeyPatch, *entries: str) -> list[str]:
    """Answers for getpass prompts, in order; returns the prompts shown."""
    answers = list(entries)
    prompts: list[str] = []

    def fake(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr(getpass, "getpass", fake)
    return prompts


def create(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, name: str, *argv: str
) -> Run:
    with_stdin(monkeypatch, "the password\n")
    run = cli("admin", "create", name, "--password-stdin", *argv)
    assert run.status == 0, run.err
    return run


def test_create_from_stdin_then_authenticate(
    cli: CliRunner, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = create(cli, monkeypatch, "alice", "--role", "editor", "--json")
    shown = json.loads(run.out)
    assert (shown["username"], shown["role"], shown["enabled"]) == (
        "alice",
        "editor",
        True,
    )
    assert "the password" not in run.out + run.err
    assert "$2a$" not in run.out + run.err
    user = PostgresAdminUserRepository(pool).authenticate("alice", "the password")
    assert user.id == shown["id"]


def test_create_prompts_twice_and_refuses_a_mismatch(
    cli: CliRunner, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = typed(monkeypatch, "typed secret", "typed secret")
    run = cli("admin", "create", "bob")
    assert run.status == 0, run.err
    assert len(prompts) == 2
    assert "created admin user bob (viewer)" in run.out
    assert PostgresAdminUserRepository(pool).authenticate("bob", "typed secret")

    typed(monkeypatch, "one", "another")
    run = cli("admin", "create", "carol")
    assert run.status == 2
    assert "password: the two entries differ" in run.err
    assert "one" not in run.err.replace("one line", "")


def test_a_password_bcrypt_would_truncate_is_refused_unechoed(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = "p" * 73
    with_stdin(monkeypatch, long + "\n")
    run = cli("admin", "create", "dave", "--password-stdin")
    assert run.status == 2
    assert "password: must be at most 72 bytes" in run.err
    assert long not in run.err
    assert cli("admin", "list", "--json").out.strip() == "[]"


def test_the_password_is_never_an_argument(cli: CliRunner) -> None:
    for argv in (
        ("admin", "create", "erin", "--password", "hunter2"),
        ("admin", "create", "erin", "--password=hunter2"),
        ("admin", "set-password", "erin", "--password", "hunter2"),
    ):
        run = cli(*argv)
        assert run.status == 2
        assert "--password is not accepted" in run.err
        assert "hunter2" not in run.err + run.out
    assert cli("admin", "list", "--json").out.strip() == "[]"


def test_list_disable_enable_set_password_delete(
    cli: CliRunner, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(cli, monkeypatch, "alice", "--role", "admin")
    create(cli, monkeypatch, "bob")
    listing = cli("admin", "list")
    assert listing.status == 0
    lines = listing.out.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "ENABLED", "ID", "CREATED_AT"]
    assert {line.split()[0] for line in lines[1:]} == {"alice", "bob"}
    assert "$2a$" not in listing.out

    repo = PostgresAdminUserRepository(pool)
    assert cli("admin", "disable", "alice").out == "admin user alice disabled\n"
    with pytest.raises(InvalidCredentials):
        repo.authenticate("alice", "the password")
    assert "already disabled" in cli("admin", "disable", "alice").out
    assert cli("admin", "enable", "alice").status == 0
    assert repo.authenticate("alice", "the password").role == "admin"

    with_stdin(monkeypatch, "a new one\n")
    assert cli("admin", "set-password", "alice", "--password-stdin").status == 0
    assert repo.authenticate("alice", "a new one").username == "alice"

    refused = cli("admin", "delete", "bob")
    assert refused.status == 2
    assert "--yes" in refused.err
    assert cli("admin", "delete", "bob", "--yes").status == 0
    assert [u.username for u in repo.list()] == ["alice"]
    gone = cli("admin", "delete", "bob", "--yes")
    assert gone.status == 1
    assert "no admin user bob" in gone.err


def test_duplicates_and_bad_roles_fail_cleanly(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(cli, monkeypatch, "alice")
    with_stdin(monkeypatch, "x\n")
    again = cli("admin", "create", "alice", "--password-stdin")
    assert again.status == 1
    assert "already exists" in again.err
    assert cli("admin", "create", "bob", "--role", "root").status == 2


def test_the_audit_log_records_the_actor_and_lists_newest_first(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, api_key = cli.create("--name", "Acme", "--actor", "ops-alice")
    assert cli("tenant", "disable", tenant_id).status == 0  # as the OS user
    create(cli, monkeypatch, "bob", "--actor", "ops-alice")

    run = cli("audit", "list", "--json")
    assert run.status == 0, run.err
    entries = json.loads(run.out)
    assert [(e["table"], e["action"], e["actor"]) for e in entries] == [
        ("admin_users", "INSERT", "ops-alice"),
        ("tenants", "UPDATE", "os-user"),
        ("tenants", "INSERT", "ops-alice"),
    ]
    assert entries[1]["changes"]["enabled"] == {"old": True, "new": False}
    assert entries[2]["changes"]["api_key_hash"] == {"redacted": True}
    assert entries[0]["changes"]["password_hash"] == {"redacted": True}
    assert entries[0]["database_user"] == "postgres"
    assert api_key not in run.out
    assert "$2a$" not in run.out

    mine = json.loads(cli("audit", "list", "--json", "--tenant", tenant_id).out)
    assert [e["action"] for e in mine] == ["UPDATE", "INSERT"]
    page = json.loads(
        cli(
            "audit", "list", "--json", "--limit", "1", "--before", str(mine[0]["id"])
        ).out
    )
    assert [e["id"] for e in page] == [mine[1]["id"]]
    future = cli("audit", "list", "--since", "2999-01-01")
    assert future.out == "no audit entries\n"

    text = cli("audit", "list")
    header, *rows = text.out.splitlines()
    assert header.split() == ["ENTRY", "AT", "WHO", "ACTION", "TABLE", "ID", "CHANGES"]
    assert len(rows) == 3
    assert "enabled: True -> False" in rows[1]
    assert "os-user" in rows[1]


def test_bad_audit_arguments_are_usage_errors(cli: CliRunner) -> None:
    assert cli("audit", "list", "--since", "yesterday").status == 2
    assert cli("audit", "list", "--limit", "0").status == 2
    assert cli("audit", "list", "--tenant", "not-a-uuid").status == 2


def test_commands_use_one_plain_connection_not_a_pool(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a one-shot command opened a pool")

    monkeypatch.setattr(psycopg_pool.ConnectionPool, "__init__", no_pool)
    create(cli, monkeypatch, "alice")
    tenant_id, _ = cli.create("--name", "Acme")
    for argv in (
        ("admin", "list"),
        ("tenant", "list"),
        ("tenant", "disable", tenant_id),
        ("audit", "list"),
    ):
        assert cli(*argv).status == 0, argv


@pytest.mark.parametrize(
    "argv", [("admin", "list"), ("audit", "list"), ("tenant", "list")]
)
def test_an_unreachable_database_is_one_line_at_once(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    from tenantstore.cli import main

    assert main([*argv, "--database-url", closed_port_url()]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("tenantstore: error: cannot connect to PostgreSQL: ")
    assert "refused" in line


def test_the_tenant_list_still_reads_back(cli: CliRunner, pool: ConnectionPool) -> None:
    tenant_id, _ = cli.create("--name", "Acme")
    assert PostgresTenantRepository(pool).list_audit()[0].entity_id == tenant_id
