"""``python -m tenantstore tenant ...``: real PostgreSQL, output read from capsys.

Each test calls `main` in-process, then checks the database through a
`PostgresTenantRepository` on the `pool` fixture: a key the CLI printed must
authenticate there, and a key the CLI should have revoked must not.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tenantstore import (
    KeyCipher,
    PostgresTenantRepository,
    TenantNotFound,
    hash_api_key,
)
from tenantstore.cli import main
from tests.test_cli import closed_port_url


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TENANTSTORE_CIPHER_KEYS", raising=False)


class CliRunner:
    """`main` against the test database; each call returns what it printed."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self._capsys = capsys

    def __call__(self, *argv: str) -> Run:
        self._capsys.readouterr()
        status = main([*argv, "--database-url", self.url])
        captured = self._capsys.readouterr()
        assert "Traceback" not in captured.err
        return Run(status, captured.out, captured.err)

    def create(self, *argv: str) -> tuple[str, str]:
        """Create a tenant; its id and the key printed for it."""
        run = self("tenant", "create", "--json", *argv)
        assert run.status == 0, run.err
        created = json.loads(run.out)
        return created["id"], created["api_key"]


@pytest.fixture
def cli(clean_db: str, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    return CliRunner(clean_db, capsys)


def new_ring() -> str:
    return "k1:" + base64.b64encode(KeyCipher.generate_key()).decode()


@pytest.fixture
def ring_file(tmp_path: Path) -> Callable[[str], str]:
    """Writes a ring to a file of its own; returns the path for --cipher-keys-file."""
    count = 0

    def write(ring: str) -> str:
        nonlocal count
        count += 1
        path = tmp_path / f"ring-{count}"
        path.write_text(ring + "\n")  # a trailing newline, as editors leave it
        return str(path)

    return write


def authenticates(pool: ConnectionPool, api_key: str) -> bool:
    try:
        PostgresTenantRepository(pool).get_by_api_key(api_key)
    except TenantNotFound:
        return False
    return True


def test_create_prints_the_key_once_and_it_authenticates(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    run = cli(
        "tenant",
        "create",
        "--name",
        "Acme",
        "--budget",
        "12.345",
        "--rate-limit",
        "120",
        "--model",
        "gpt-4o",
        "--model",
        "claude",
        "--default-provider",
        "openai",
        "--fallback",
        "anthropic",
    )
    assert run.status == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("created tenant ")
    tenant_id = lines[0].split()[2]
    [key_line] = [line for line in lines if line.startswith("api key: ")]
    api_key = key_line.removeprefix("api key: ")
    assert run.out.count(api_key) == 1
    assert "shown once" in run.out
    assert hash_api_key(api_key) not in run.out

    tenant = PostgresTenantRepository(pool).get_by_api_key(api_key)
    assert tenant.id == tenant_id
    assert tenant.name == "Acme"
    assert tenant.budget_usd == Decimal("12.34")  # half-even, to cents
    assert tenant.rate_limit_rpm == 120
    assert tenant.allowed_models == ("gpt-4o", "claude")
    assert tenant.default_provider == "openai"
    assert tenant.fallback_providers == ("anthropic",)
    assert tenant.enabled
    # Without a cipher ring only the hash is kept: nothing to reveal.
    assert PostgresTenantRepository(pool).reveal_api_key(tenant_id) is None


def test_create_json_parses_and_takes_an_id(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    wanted = uuid.uuid4()
    run = cli(
        "tenant",
        "create",
        "--json",
        "--name",
        "Beta",
        "--budget",
        "5",
        "--disabled",
        "--id",
        str(wanted).upper(),
    )
    assert run.status == 0, run.err
    created = json.loads(run.out)
    assert created["id"] == str(wanted)
    assert created["name"] == "Beta"
    assert created["budget_usd"] == "5.00"
    assert created["rate_limit_rpm"] == 60
    assert created["allowed_models"] == []
    assert created["default_provider"] is None
    assert created["enabled"] is False
    assert datetime.fromisoformat(created["created_at"]).utcoffset() is not None
    assert "api_key_hash" not in created
    assert hash_api_key(created["api_key"]) not in run.out
    # Created disabled: the key exists but does not authenticate yet.
    assert not authenticates(pool, created["api_key"])
    assert PostgresTenantRepository(pool).get_by_id(str(wanted)).name == "Beta"


def test_list_and_show_never_print_the_key_or_its_hash(cli: CliRunner) -> None:
    assert cli("tenant", "list").out == "no tenants\n"
    assert json.loads(cli("tenant", "list", "--json").out) == []

    first, first_key = cli.create("--name", "first", "--budget", "1.5")
    second, second_key = cli.create("--name", "evil\x1b[2Jname\n")
    secrets = [first_key, second_key, hash_api_key(first_key), hash_api_key(second_key)]

    outputs = []
    table = cli("tenant", "list")
    assert table.status == 0
    outputs.append(table.out)
    header, *rows = table.out.splitlines()
    assert header.split() == [
        "ID",
        "NAME",
        "ENABLED",
        "BUDGET_USD",
        "RPM",
        "KEY",
        "KEY_EXPIRES_AT",
        "PREVIOUS_KEY_UNTIL",
        "CREATED_AT",
    ]
    assert len(rows) == 2  # the newline in a name does not split its row
    assert "\x1b" not in table.out
    assert "evil\\x1b[2Jname\\n" in table.out
    first_row = next(row for row in rows if row.startswith(first))
    assert first_row.split()[1:5] == ["first", "yes", "1.50", "60"]

    listed = cli("tenant", "list", "--json")
    outputs.append(listed.out)
    assert {t["id"] for t in json.loads(listed.out)} == {first, second}

    for tenant_id in (first, second):
        shown = cli("tenant", "show", tenant_id)
        assert shown.status == 0
        assert f"id:                 {tenant_id}\n" in shown.out
        outputs.append(shown.out)
        as_json = cli("tenant", "show", tenant_id, "--json")
        assert json.loads(as_json.out)["id"] == tenant_id
        outputs.append(as_json.out)

    for output in outputs:
        for secret in secrets:
            assert secret not in output
        assert "api_key" not in output


def test_disable_stops_authentication_and_enable_restores_it(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    tenant_id, api_key = cli.create("--name", "toggled")
    assert authenticates(pool, api_key)

    run = cli("tenant", "disable", tenant_id)
    assert (run.status, run.out) == (0, f"tenant {tenant_id} disabled\n")
    assert not authenticates(pool, api_key)
    assert (
        json.loads(cli("tenant", "show", tenant_id, "--json").out)["enabled"] is False
    )
    assert "already disabled" in cli("tenant", "disable", tenant_id).out

    run = cli("tenant", "enable", tenant_id)
    assert (run.status, run.out) == (0, f"tenant {tenant_id} enabled\n")
    assert authenticates(pool, api_key)
    for run in (
        cli("tenant", "disable", tenant_id),
        cli("tenant", "enable", tenant_id),
    ):
        assert api_key not in run.out + run.err


def test_rotate_key_revokes_the_old_key_and_reveal_returns_the_new_one(
    cli: CliRunner, pool: ConnectionPool, ring_file: Callable[[str], str]
) -> None:
    ring = ring_file(new_ring())
    tenant_id, old_key = cli.create("--name", "rotating", "--cipher-keys-file", ring)
    revealed = cli("tenant", "reveal-key", tenant_id, "--cipher-keys-file", ring)
    assert (revealed.status, revealed.out) == (0, old_key + "\n")

    run = cli("tenant", "rotate-key", tenant_id, "--cipher-keys-file", ring)
    assert run.status == 0, run.err
    [key_line] = [
        line for line in run.out.splitlines() if line.startswith("new api key: ")
    ]
    new_key = key_line.removeprefix("new api key: ")
    assert new_key != old_key
    assert old_key not in run.out
    assert "shown once" in run.out

    assert not authenticates(pool, old_key)
    assert PostgresTenantRepository(pool).get_by_api_key(new_key).id == tenant_id
    revealed = cli("tenant", "reveal-key", tenant_id, "--cipher-keys-file", ring)
    assert (revealed.status, revealed.out) == (0, new_key + "\n")


def test_rotate_key_without_a_cipher_drops_the_stored_encryption(
    cli: CliRunner,
    pool: ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
    ring_file: Callable[[str], str],
) -> None:
    ring = new_ring()
    monkeypatch.setenv("TENANTSTORE_CIPHER_KEYS", ring)
    tenant_id, old_key = cli.create("--name", "from the environment")
    assert cli("tenant", "reveal-key", tenant_id).out == old_key + "\n"

    monkeypatch.delenv("TENANTSTORE_CIPHER_KEYS")
    rotated = cli("tenant", "rotate-key", tenant_id, "--json")
    assert rotated.status == 0
    new_key = json.loads(rotated.out)["api_key"]
    assert authenticates(pool, new_key)
    assert not authenticates(pool, old_key)

    # The old ciphertext did not survive its key: nothing is left to reveal.
    run = cli("tenant", "reveal-key", tenant_id, "--cipher-keys-file", ring_file(ring))
    assert run.status == 1
    assert "no stored key" in run.err
    assert run.out == ""


def test_rotate_key_with_grace_then_revoke_and_create_with_expiry(
    cli: CliRunner, pool: ConnectionPool
) -> None:
    tenant_id, old_key = cli.create("--name", "graceful", "--expires-in", "90d")
    shown = json.loads(cli("tenant", "show", tenant_id, "--json").out)
    assert shown["key_prefix"] == old_key[:8]
    expires = datetime.fromisoformat(shown["key_expires_at"])
    left = expires - datetime.now(expires.tzinfo)
    assert timedelta(days=89) < left <= timedelta(days=90)
    assert shown["previous_key_until"] is None

    run = cli(
        "tenant", "rotate-key", tenant_id, "--grace", "24h", "--expires-in", "30d"
    )
    assert run.status == 0, run.err
    assert "the previous key works until " in run.out
    assert old_key not in run.out
    [key_line] = [line for line in run.out.splitlines() if line.startswith("new api")]
    new_key = key_line.removeprefix("new api key: ")
    # Both keys authenticate during the grace period.
    assert authenticates(pool, old_key)
    assert authenticates(pool, new_key)
    shown = json.loads(cli("tenant", "show", tenant_id, "--json").out)
    assert shown["key_prefix"] == new_key[:8]
    assert shown["previous_key_until"] is not None
    text = cli("tenant", "show", tenant_id).out
    assert f"key_prefix:         {new_key[:8]}\n" in text
    listed = cli("tenant", "list").out
    assert new_key[:8] in listed
    assert new_key not in listed

    run = cli("tenant", "revoke-previous-key", tenant_id)
    assert (run.status, run.out) == (
        0,
        f"tenant {tenant_id}: the previous key no longer works\n",
    )
    assert not authenticates(pool, old_key)
    assert authenticates(pool, new_key)
    again = cli("tenant", "revoke-previous-key", tenant_id)
    assert again.out == f"tenant {tenant_id} has no previous key\n"
    bad = cli("tenant", "rotate-key", tenant_id, "--grace", "soon")
    assert bad.status == 2
    assert authenticates(pool, new_key)


def test_reveal_key_needs_a_cipher_ring(
    cli: CliRunner, ring_file: Callable[[str], str]
) -> None:
    tenant_id, api_key = cli.create(
        "--name", "sealed", "--cipher-keys-file", ring_file(new_ring())
    )
    run = cli("tenant", "reveal-key", tenant_id)
    assert run.status == 2
    assert "--cipher-keys-file" in run.err
    assert "TENANTSTORE_CIPHER_KEYS" in run.err
    assert api_key not in run.out + run.err

    # Another ring cannot decrypt it: an error, not a key and not a traceback.
    run = cli(
        "tenant", "reveal-key", tenant_id, "--cipher-keys-file", ring_file(new_ring())
    )
    assert run.status == 1
    assert run.out == ""
    assert api_key not in run.err


def test_a_malformed_cipher_ring_is_a_usage_error(
    cli: CliRunner, ring_file: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    short = base64.b64encode(b"sixteen byte key").decode()
    for ring in ("no-colon", f"k1:{short}", "k1:not base64!"):
        run = cli(
            "tenant", "create", "--name", "x", "--cipher-keys-file", ring_file(ring)
        )
        assert run.status == 2
        assert run.err.startswith("tenantstore: error: --cipher-keys-file: ")
        assert short not in run.err
        monkeypatch.setenv("TENANTSTORE_CIPHER_KEYS", ring)
        run = cli("tenant", "create", "--name", "x")
        assert run.status == 2
        assert run.err.startswith("tenantstore: error: TENANTSTORE_CIPHER_KEYS: ")
        assert short not in run.err
        monkeypatch.delenv("TENANTSTORE_CIPHER_KEYS")
    assert cli("tenant", "list", "--json").out == "[]\n"


def test_the_ring_is_refused_on_the_command_line_and_never_echoed(
    cli: CliRunner,
) -> None:
    """Item 15: `ps` and shell history see argv; the ring is a secret."""
    ring = new_ring()
    secret = ring.partition(":")[2]
    for argv in (
        ["tenant", "create", "--name", "x", "--cipher-keys", ring],
        ["tenant", "create", "--name", "x", f"--cipher-keys={ring}"],
        ["tenant", "list", "--cipher-keys", ring],
        ["migrate", "status", "--cipher-keys", ring],
    ):
        run = cli(*argv)
        assert run.status == 2, argv
        assert "--cipher-keys is not accepted" in run.err
        assert "TENANTSTORE_CIPHER_KEYS" in run.err
        assert "--cipher-keys-file" in run.err
        assert secret not in run.out + run.err
        assert secret[:12] not in run.out + run.err
    assert cli("tenant", "list", "--json").out == "[]\n"  # nothing was created


def test_a_ring_file_that_cannot_be_read_is_a_usage_error(
    cli: CliRunner, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ring"
    empty = tmp_path / "empty-ring"
    empty.write_text("\n")
    binary = tmp_path / "binary-ring"
    binary.write_bytes(b"\xff\xfe" + bytes(range(32)))
    for path, reason in (
        (missing, "cannot read"),
        (empty, "is empty"),
        (binary, "UTF-8"),
    ):
        run = cli("tenant", "create", "--name", "x", "--cipher-keys-file", str(path))
        assert run.status == 2
        assert run.err.startswith("tenantstore: error: --cipher-keys-file: ")
        assert reason in run.err
    assert cli("tenant", "list", "--json").out == "[]\n"


def test_delete_needs_yes(cli: CliRunner, pool: ConnectionPool) -> None:
    tenant_id, api_key = cli.create("--name", "doomed")

    run = cli("tenant", "delete", tenant_id)
    assert run.status == 2
    assert "--yes" in run.err
    assert authenticates(pool, api_key)

    run = cli("tenant", "delete", tenant_id, "--yes")
    assert run.status == 0
    assert not authenticates(pool, api_key)
    assert cli("tenant", "list", "--json").out == "[]\n"
    assert cli("tenant", "delete", tenant_id, "--yes").status == 1


@pytest.mark.parametrize(
    ("budget", "rule"),
    [
        ("lots", "is not a number"),
        ("-1", "must not be negative"),
        ("NaN", "must be finite"),
        ("100000000", "must be at most"),
    ],
)
def test_a_bad_budget_is_a_usage_error_and_writes_nothing(
    cli: CliRunner, budget: str, rule: str
) -> None:
    run = cli("tenant", "create", "--name", "x", "--budget", budget)
    assert run.status == 2
    assert f"budget_usd: {rule}" in run.err
    assert "--budget" in run.err
    assert run.out == ""  # in particular, no key
    assert cli("tenant", "list", "--json").out == "[]\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", " "], "name: must not be blank (--name)"),
        (["--name", "x", "--rate-limit", "-5"], "rate_limit_rpm: must be between"),
        (["--name", "x", "--model", "ok", "--model", ""], "allowed_models[1]: must"),
        (["--name", "x", "--default-provider", "p" * 51], "default_provider: must"),
        (["--name", "x", "--rate-limit", "many"], "--rate-limit: invalid int value"),
        (["--name", "x", "--id", "not-a-uuid"], "argument --id: must be a UUID"),
    ],
)
def test_other_rejected_values_are_usage_errors(
    cli: CliRunner, argv: list[str], message: str
) -> None:
    run = cli("tenant", "create", *argv)
    assert run.status == 2
    assert message in run.err
    assert cli("tenant", "list", "--json").out == "[]\n"


def test_a_duplicate_id_is_a_conflict(cli: CliRunner) -> None:
    tenant_id, _ = cli.create("--name", "original")
    run = cli("tenant", "create", "--name", "copy", "--id", tenant_id)
    assert run.status == 1
    assert "already exists" in run.err
    assert run.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["show"],
        ["show", "--json"],
        ["disable"],
        ["enable"],
        ["delete", "--yes"],
        ["rotate-key"],
        ["reveal-key"],
    ],
)
def test_an_unknown_id_fails_with_no_tenant(
    cli: CliRunner, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANTSTORE_CIPHER_KEYS", new_ring())  # reveal-key needs it
    missing = str(uuid.uuid4())
    run = cli("tenant", argv[0], missing, *argv[1:])
    assert run.status == 1
    assert run.err == f"tenantstore: error: no tenant {missing}\n"
    assert run.out == ""


def test_a_malformed_id_is_a_usage_error_and_is_not_echoed(cli: CliRunner) -> None:
    tenant_id, api_key = cli.create("--name", "victim")
    run = cli("tenant", "show", api_key)  # a key pasted where the id belongs
    assert run.status == 2
    assert "argument ID: must be a UUID" in run.err
    assert api_key not in run.err
    # Any UUID spelling names the same tenant.
    assert cli("tenant", "show", tenant_id.upper()).status == 0


def test_the_database_url_comes_from_the_environment(
    clean_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["tenant", "list"]) == 2
    err = capsys.readouterr().err
    assert "--database-url" in err
    assert "DATABASE_URL" in err

    monkeypatch.setenv("DATABASE_URL", clean_db)
    assert main(["tenant", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_password_on_the_command_line_draws_a_warning_that_does_not_show_it(
    clean_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 15: the URL may come from argv, but a password there is seen by `ps`."""
    # The test server trusts local connections: the password is carried, not used.
    conninfo = psycopg.conninfo.conninfo_to_dict(clean_db)
    with_password = psycopg.conninfo.make_conninfo(
        clean_db, password="hunter2-not-echoed"
    )
    user = conninfo.get("user", "postgres")
    # Host and port as query parameters: the host may be a socket directory.
    where = urlencode(
        [(k, str(conninfo[k])) for k in ("host", "port") if k in conninfo]
    )
    as_url = f"postgresql://{user}:hunter2-not-echoed@/{conninfo['dbname']}?{where}"
    for url in (with_password, as_url):
        assert main(["tenant", "list", "--json", "--database-url", url]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out) == []
        assert (
            "warning: the --database-url given on the command line holds a "
            "password" in captured.err
        )
        assert "DATABASE_URL" in captured.err
        assert "hunter2" not in captured.err + captured.out
        # Every command warns, migrate's too.
        assert main(["migrate", "status", "--database-url", url]) == 0
        captured = capsys.readouterr()
        assert "warning: the --database-url" in captured.err
        assert "hunter2" not in captured.err + captured.out
    # The same URL from the environment, or one without a password: no warning.
    monkeypatch.setenv("DATABASE_URL", as_url)
    assert main(["tenant", "list"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["tenant", "list", "--database-url", clean_db]) == 0
    assert capsys.readouterr().err == ""
    # A malformed one that looks like it holds a password is warned about too.
    assert main(["tenant", "list", "--database-url", "password=hunter2 bogus"]) == 2
    err = capsys.readouterr().err
    assert "warning" in err
    assert "hunter2" not in err


def test_a_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = "host=nowhere password=hunter2 bogus"
    assert main(["tenant", "list", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "--database-url: is not a PostgreSQL connection string" in err
    assert "hunter2" not in err


def test_an_unreachable_database_fails_with_a_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["tenant", "list", "--database-url", closed_port_url()]) == 1
    captured = capsys.readouterr()
    # One line, with the driver's reason, not the pool's retry warnings.
    [line] = captured.err.splitlines()
    assert line.startswith("tenantstore: error: cannot connect to PostgreSQL: ")
    assert "refused" in line
    assert captured.out == ""
