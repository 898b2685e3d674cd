"""The audit log on every backend, and on PostgreSQL for every writer.

`ops` runs each contract test on memory and PostgreSQL, sync and async, with the
tenant and admin-user repositories sharing one log (one store, one database). The
PostgreSQL-only tests write around the library: the real `psql` binary, a role
with no privilege on the log, a column added after migration 013.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncInMemoryAdminUserRepository,
    AsyncInMemoryTenantRepository,
    AsyncPostgresAdminUserRepository,
    AsyncPostgresTenantRepository,
    AuditChange,
    AuditEvent,
    CachedTenantRepository,
    Conflict,
    InMemoryAdminUserRepository,
    InMemoryTenantRepository,
    InvalidInput,
    KeyCipher,
    PostgresAdminUserRepository,
    PostgresTenantRepository,
    Tenant,
    acting_as,
    create_pool,
    generate_api_key,
    hash_api_key,
    migrate,
)
from tenantstore import _passwords as passwords_module
from tests.fix_backends import FakeClock, Synced
from tests.pgserver import scratch_database

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CIPHER = KeyCipher({"k1": bytes(range(32, 64))})


@dataclasses.dataclass
class Ops:
    tenants: Any
    admins: Any
    clock: FakeClock
    url: str | None
    runner: asyncio.Runner | None = None


@pytest.fixture(params=["memory", "memory-async", "postgres", "postgres-async"])
def ops(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Ops]:
    monkeypatch.setattr(passwords_module, "_cost", 4)
    clock = FakeClock(T0)
    kind = request.param
    if kind == "memory":
        tenants = InMemoryTenantRepository(clock=clock, cipher=CIPHER, actor="svc")
        admins = InMemoryAdminUserRepository(tenants, actor="svc")
        yield Ops(tenants, admins, clock, None)
    elif kind == "memory-async":
        runner: asyncio.Runner = request.getfixturevalue("runner")
        atenants = AsyncInMemoryTenantRepository(
            clock=clock, cipher=CIPHER, actor="svc"
        )
        aadmins = AsyncInMemoryAdminUserRepository(atenants, actor="svc")
        yield Ops(
            Synced(atenants, runner), Synced(aadmins, runner), clock, None, runner
        )
    elif kind == "postgres":
        pool: ConnectionPool = request.getfixturevalue("pool")
        yield Ops(
            PostgresTenantRepository(pool, clock=clock, cipher=CIPHER, actor="svc"),
            PostgresAdminUserRepository(pool, clock=clock, actor="svc"),
            clock,
            request.getfixturevalue("clean_db"),
        )
    else:
        runner = request.getfixturevalue("runner")
        apool: AsyncConnectionPool = request.getfixturevalue("apool")
        yield Ops(
            Synced(
                AsyncPostgresTenantRepository(
                    apool, clock=clock, cipher=CIPHER, actor="svc"
                ),
                runner,
            ),
            Synced(
                AsyncPostgresAdminUserRepository(apool, clock=clock, actor="svc"),
                runner,
            ),
            clock,
            request.getfixturevalue("clean_db"),
            runner,
        )


def new_tenant(name: str = "Acme") -> tuple[Tenant, str]:
    key = generate_api_key()
    return Tenant(name=name, api_key_hash=hash_api_key(key)), key


def plain(event: AuditEvent) -> dict[str, Any]:
    """What both backends record alike (the database adds role and app name)."""
    return {
        "table": event.table,
        "action": event.action,
        "entity_id": event.entity_id,
        "actor": event.actor,
        "at": event.at,
        "changes": {c.field: (c.old, c.new, c.redacted) for c in event.changes},
    }


REDACTED = (None, None, True)


def test_a_tenant_s_life_in_the_log(ops: Ops) -> None:
    tenant, key = new_tenant()
    created = ops.tenants.create(tenant, api_key=key)
    ops.clock.advance(60)
    t1 = ops.clock.now()
    updated = ops.tenants.update(
        dataclasses.replace(created, name="Acme Corp", budget_usd=Decimal("12.5"))
    )
    ops.clock.advance(60)
    t2 = ops.clock.now()
    disabled = ops.tenants.set_enabled(created.id, False)
    ops.clock.advance(60)
    t3 = ops.clock.now()
    ops.tenants.delete(created.id)

    events = ops.tenants.list_audit()
    assert [e.action for e in events] == ["DELETE", "UPDATE", "UPDATE", "INSERT"]
    assert all(e.table == "tenants" and e.entity_id == created.id for e in events)
    assert all(e.actor == "svc" for e in events)
    assert [e.at for e in events] == [t3, t2, t1, T0]
    assert events[0].id > events[1].id > events[2].id > events[3].id

    insert = plain(events[3])["changes"]
    assert insert["name"] == (None, "Acme", False)
    assert insert["budget_usd"] == (None, Decimal("0"), False)
    assert insert["allowed_models"] == (None, (), False)
    assert insert["created_at"] == (None, T0, False)
    assert insert["api_key_hash"] == REDACTED
    assert insert["api_key_encrypted"] == REDACTED  # stored: the cipher is set
    assert "default_provider" not in insert  # NULL before and after

    assert plain(events[2])["changes"] == {
        "name": ("Acme", "Acme Corp", False),
        "budget_usd": (Decimal("0"), Decimal("12.50"), False),
        "updated_at": (created.updated_at, updated.updated_at, False),
    }
    assert plain(events[1])["changes"] == {
        "enabled": (True, False, False),
        "updated_at": (updated.updated_at, disabled.updated_at, False),
    }
    delete = plain(events[0])["changes"]
    assert delete["name"] == ("Acme Corp", None, False)
    assert delete["enabled"] == (False, None, False)
    assert delete["api_key_hash"] == REDACTED


def test_a_new_key_is_logged_as_changed_never_its_value(ops: Ops) -> None:
    tenant, key = new_tenant()
    created = ops.tenants.create(tenant)
    new_key = generate_api_key()
    ops.tenants.update(
        dataclasses.replace(created, api_key_hash=hash_api_key(new_key)),
        api_key=new_key,
    )
    (rekey, _) = ops.tenants.list_audit()
    assert rekey.change("api_key_hash") == AuditChange(
        field="api_key_hash", redacted=True
    )
    assert rekey.change("api_key_encrypted") == AuditChange(
        field="api_key_encrypted", redacted=True
    )
    assert rekey.change("name") is None
    text = repr(ops.tenants.list_audit())
    for secret in (key, new_key, hash_api_key(key), hash_api_key(new_key)):
        assert secret not in text


def test_admin_users_share_the_log_and_passwords_are_redacted(ops: Ops) -> None:
    alice = ops.admins.create("alice", "first password", role="editor")
    ops.clock.advance(1)
    ops.admins.set_password(alice.id, "second password")
    ops.admins.update(dataclasses.replace(alice, role="admin"))
    ops.admins.delete(alice.id)
    tenant, _ = new_tenant()
    ops.tenants.create(tenant)

    events = ops.tenants.list_audit()
    assert [(e.table, e.action) for e in events] == [
        ("tenants", "INSERT"),
        ("admin_users", "DELETE"),
        ("admin_users", "UPDATE"),
        ("admin_users", "UPDATE"),
        ("admin_users", "INSERT"),
    ]
    assert ops.admins.list_audit() == events  # one log, read from either
    created, password, role = events[4], events[3], events[2]
    assert created.change("username") == AuditChange(field="username", new="alice")
    assert created.change("role") == AuditChange(field="role", new="editor")
    assert created.change("password_hash") == AuditChange(
        field="password_hash", redacted=True
    )
    assert {c.field for c in password.changes} == {"password_hash", "updated_at"}
    assert role.change("role") == AuditChange(field="role", old="editor", new="admin")
    assert "first password" not in repr(events)
    assert "$2a$" not in repr(events)


def test_acting_as_names_the_actor_of_writes_inside_it(ops: Ops) -> None:
    tenant, _ = new_tenant()
    if ops.runner is None:
        with acting_as("alice@ops"):
            ops.tenants.create(tenant)
            ops.admins.create("bob", "password")
    else:
        # asyncio.Runner runs each call in a context of its own: set it inside.
        tenants, admins = ops.tenants._target, ops.admins._target

        async def writes() -> None:
            with acting_as("alice@ops"):
                await tenants.create(tenant)
                await admins.create("bob", "password")

        ops.runner.run(writes())
    ops.tenants.set_enabled(tenant.id, False)
    events = ops.tenants.list_audit()
    assert [e.actor for e in events] == ["svc", "alice@ops", "alice@ops"]
    assert events[0].who == "svc"


@pytest.mark.parametrize("kind", ["memory-async", "postgres-async"])
def test_acting_as_follows_the_task_in_async_code(
    kind: str, request: pytest.FixtureRequest, runner: asyncio.Runner
) -> None:
    if kind == "memory-async":
        inner: Any = AsyncInMemoryTenantRepository(actor="svc")
    else:
        apool: AsyncConnectionPool = request.getfixturevalue("apool")
        inner = AsyncPostgresTenantRepository(apool, actor="svc")
    tenant, other = new_tenant()[0], new_tenant()[0]

    async def request_as(actor: str, tenant: Tenant) -> None:
        with acting_as(actor):
            await asyncio.sleep(0)  # the two requests interleave
            await inner.create(tenant)

    async def both() -> list[AuditEvent]:
        await asyncio.gather(request_as("a", tenant), request_as("b", other))
        await inner.create(new_tenant()[0])  # outside: the repository's own
        events: list[AuditEvent] = await inner.list_audit()
        return events

    events = runner.run(both())
    by_id = {e.entity_id: e.actor for e in events}
    assert by_id[tenant.id] == "a"
    assert by_id[other.id] == "b"
    assert events[0].actor == "svc"


def test_pages_newest_first_by_cursor_and_filters(ops: Ops) -> None:
    first, _ = new_tenant("first")
    other, _ = new_tenant("other")
    ops.tenants.create(first)
    ops.tenants.create(other)
    for n in range(5):
        ops.clock.advance(10)
        ops.tenants.set_enabled(first.id, n % 2 == 1)
    everything = ops.tenants.list_audit(limit=1000)
    assert len(everything) == 7
    assert [e.id for e in everything] == sorted(
        (e.id for e in everything), reverse=True
    )

    pages: list[AuditEvent] = []
    page = ops.tenants.list_audit(limit=3)
    while page:
        pages.extend(page)
        page = ops.tenants.list_audit(limit=3, before=page[-1].id)
    assert pages == everything

    mine = ops.tenants.list_audit(entity_id=first.id)
    assert len(mine) == 6
    assert all(e.entity_id == first.id for e in mine)
    since = T0.replace(second=30)
    recent = ops.tenants.list_audit(since=since)
    assert recent == [e for e in everything if e.at >= since]
    assert len(recent) == 3
    assert ops.tenants.list_audit(since=since, entity_id=other.id) == []
    assert ops.tenants.list_audit(entity_id=first.id.upper()) == []
    assert ops.tenants.list_audit(entity_id="nope") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"since": datetime(2026, 1, 1)}, "since"),
        ({"since": "2026-01-01"}, "since"),
        ({"before": "5"}, "before"),
    ],
)
def test_bad_arguments_are_invalid_input(
    ops: Ops, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        ops.tenants.list_audit(**kwargs)
    assert caught.value.field == field


def test_a_failed_write_leaves_no_entry(ops: Ops) -> None:
    tenant, _ = new_tenant()
    ops.tenants.create(tenant)
    with pytest.raises(Conflict):
        ops.tenants.create(dataclasses.replace(new_tenant()[0], id=tenant.id))
    ops.admins.create("alice", "password")
    with pytest.raises(Conflict):
        ops.admins.create("alice", "password")
    assert [e.action for e in ops.tenants.list_audit()] == ["INSERT", "INSERT"]


def test_a_bad_actor_is_refused() -> None:
    with pytest.raises(InvalidInput, match="actor"):
        InMemoryTenantRepository(actor="")
    with pytest.raises(InvalidInput, match="actor"), acting_as("x" * 256):
        pass


def test_the_cache_passes_the_log_through(runner: asyncio.Runner) -> None:
    inner = InMemoryTenantRepository()
    cached = CachedTenantRepository(inner)
    tenant, _ = new_tenant()
    cached.create(tenant)
    assert cached.list_audit() == inner.list_audit()
    assert len(cached.list_audit(entity_id=tenant.id, limit=1)) == 1

    ainner = AsyncInMemoryTenantRepository()
    acached = AsyncCachedTenantRepository(ainner)
    runner.run(acached.create(tenant))
    events = runner.run(acached.list_audit(limit=5))
    assert [e.action for e in events] == ["INSERT"]


# -- PostgreSQL: whoever the writer is ------------------------------------------------


def psql(url: str, command: str, env: dict[str, str] | None = None) -> None:
    binary = shutil.which("psql") or "/usr/bin/psql"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    run_env.update(env or {})
    subprocess.run(
        [binary, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", command],
        check=True,
        capture_output=True,
        env=run_env,
        timeout=60,
    )


def test_a_raw_update_from_psql_is_logged_with_its_role_and_application(
    pool: ConnectionPool, clean_db: str
) -> None:
    tenants = PostgresTenantRepository(pool, actor="svc")
    tenant, _ = new_tenant()
    created = tenants.create(tenant)
    psql(clean_db, f"UPDATE tenants SET enabled=false WHERE id = '{created.id}'")
    psql(
        clean_db,
        f"UPDATE tenants SET name = 'renamed' WHERE id = '{created.id}'",
        {"PGAPPNAME": "ops-console"},
    )
    renamed, disabled, inserted = tenants.list_audit()
    assert inserted.actor == "svc"
    assert disabled.action == "UPDATE"
    assert disabled.actor is None  # psql passed none
    assert disabled.database_user == "postgres"
    assert disabled.application_name == "psql"
    assert disabled.who == "postgres (psql)"
    # psql did not move updated_at; migration 002's trigger did, for every writer.
    assert [c.field for c in disabled.changes] == ["enabled", "updated_at"]
    assert disabled.change("enabled") == AuditChange(
        field="enabled", old=True, new=False
    )
    moved = disabled.change("updated_at")
    assert moved is not None
    assert moved.new > moved.old
    assert renamed.application_name == "ops-console"
    assert renamed.change("name") == AuditChange(
        field="name", old="Acme", new="renamed"
    )
    with psycopg.connect(clean_db) as conn:
        server_now = conn.execute("SELECT now()").fetchone()
    assert server_now is not None
    # No stated time: the server's, close to now (the repository's is the clock's).
    assert abs((disabled.at - server_now[0]).total_seconds()) < 600


def test_no_secret_appears_in_any_column(pool: ConnectionPool, clean_db: str) -> None:
    passwords_module._cost = 4
    stored: list[str] = []  # every hash and ciphertext the rows held

    def keep_secrets() -> None:
        with psycopg.connect(clean_db) as conn:
            for (value,) in conn.execute("SELECT password_hash FROM admin_users"):
                stored.append(value)
            for hashed, encrypted in conn.execute(
                "SELECT api_key_hash, api_key_encrypted FROM tenants"
            ):
                stored.append(hashed)
                if encrypted is not None:
                    stored.append(bytes(encrypted).hex())

    try:
        tenants = PostgresTenantRepository(pool, cipher=CIPHER)
        admins = PostgresAdminUserRepository(pool)
        tenant, key = new_tenant()
        created = tenants.create(tenant, api_key=key)
        keep_secrets()
        new_key = generate_api_key()
        tenants.update(
            dataclasses.replace(created, api_key_hash=hash_api_key(new_key)),
            api_key=new_key,
        )
        alice = admins.create("alice", "the password")
        keep_secrets()
        admins.set_password(alice.id, "another password")
        keep_secrets()
        # The Go service's way of re-keying, and a raw write of every secret.
        psql(
            clean_db,
            "UPDATE tenants SET api_key_hash = 'gohash', "
            f"api_key_encrypted = '\\xdeadbeef' WHERE id = '{created.id}'",
        )
        tenants.delete(created.id)
        admins.delete(alice.id)
    finally:
        passwords_module._cost = passwords_module.BCRYPT_COST
    with psycopg.connect(clean_db) as conn:
        # Every column of every entry, as text.
        rows = conn.execute("SELECT audit_log::text FROM audit_log").fetchall()
    assert len(rows) == 7
    dump = "\n".join(r[0] for r in rows)
    assert len(stored) >= 6
    for secret in [
        key,
        new_key,
        hash_api_key(key),
        hash_api_key(new_key),
        "gohash",
        "deadbeef",
        "the password",
        "another password",
        "$2a$",
        *stored,
    ]:
        assert secret not in dump, secret
    assert dump.count("redacted") >= 8


def test_a_writer_without_rights_on_the_log_is_audited_and_cannot_edit_it(
    pool: ConnectionPool, clean_db: str
) -> None:
    role = "tenantstore_test_writer"
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON tenants TO {}").format(
                sql.Identifier(role)
            )
        )
    try:
        params = psycopg.conninfo.conninfo_to_dict(clean_db)
        params["user"] = role
        as_writer = psycopg.conninfo.make_conninfo("", **params)
        with psycopg.connect(as_writer, autocommit=True) as conn:
            conn.execute("INSERT INTO tenants (name, api_key_hash) VALUES ('w', 'h')")
            for statement in (
                "DELETE FROM audit_log",
                "UPDATE audit_log SET actor = 'someone else'",
                "SELECT * FROM audit_log",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        (event,) = PostgresTenantRepository(pool).list_audit()
        assert (event.action, event.database_user) == ("INSERT", role)
    finally:
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute("DELETE FROM tenants")
            conn.execute(
                sql.SQL("REVOKE ALL ON tenants FROM {}").format(sql.Identifier(role))
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_columns_added_later_are_covered_and_secrets_by_name_redacted() -> None:
    with scratch_database() as url:
        migrate.up(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE tenants ADD COLUMN spare_token_hash text, "
                "ADD COLUMN spare_label text"
            )
        with create_pool(url, min_size=1, max_size=1) as pool:
            tenants = PostgresTenantRepository(pool)
            tenant, _ = new_tenant()
            created = tenants.create(tenant)
            psql(
                url,
                "UPDATE tenants SET spare_token_hash = 'old-hash', "
                f"spare_label = 'tsk_AbCd' WHERE id = '{created.id}'",
            )
            latest = tenants.list_audit(limit=1)[0]
    # (updated_at moved too: migration 002's trigger moves it for every writer.)
    assert [c for c in latest.changes if c.field != "updated_at"] == [
        AuditChange(field="spare_label", new="tsk_AbCd"),
        AuditChange(field="spare_token_hash", redacted=True),
    ]
    assert "old-hash" not in repr(latest)


def test_truncate_is_logged(pool: ConnectionPool, clean_db: str) -> None:
    tenants = PostgresTenantRepository(pool)
    tenants.create(new_tenant()[0])
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("TRUNCATE tenants CASCADE")
    truncate, insert = tenants.list_audit()
    assert (truncate.action, truncate.entity_id, truncate.changes) == (
        "TRUNCATE",
        None,
        (),
    )
    assert insert.action == "INSERT"
