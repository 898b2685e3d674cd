"""The migration runner and the migration files, against a real PostgreSQL.

Each test gets its own empty database (`fresh_db`). Covered: the files themselves
(001 is the original schema column by column; 002..007 upgrade a database the Go
service wrote to without losing a row, and 003 sets NOT NULL without a scan; 008
notifies every change), the round trip up/down/up, golang-migrate's bookkeeping
(dirty marks, -1, the advisory lock id and waiting on it), failures, refusals and
`force`, concurrent runners; adopting a database the Go service created with psql
(and refusing, untouched, one that is not exactly 001), lock timeouts and retries,
files run outside a transaction. The Go service's statements against the migrated
schema: tests/test_go_compat.py; migrating a million rows while serving:
tests/test_migrate_online.py.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, LiteralString, TypeAlias

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tenantstore import (
    PostgresTenantRepository,
    PostgresUsageRepository,
    create_pool,
    migrate,
)
from tenantstore.errors import InvalidInput, StoreUnavailable, TenantNotFound
from tests.polling import wait_until

Sql: TypeAlias = LiteralString | sql.SQL | sql.Composed

ALL = [m.version for m in migrate.available()]
LATEST = ALL[-1]
AFTER_1 = ALL[1:]
ORIGINAL_TABLES = {"tenants", "usage_records", "admin_users"}


@contextmanager
def scratch_db(server_url: str) -> Iterator[str]:
    """Create an empty, uniquely named database on `server_url`; drop it after."""
    name = f"tsmig_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo("", **params)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


@pytest.fixture
def fresh_db(pg_server_url: str) -> Iterator[str]:
    with scratch_db(pg_server_url) as url:
        yield url


def rows(url: str, query: Sql, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def tables(url: str) -> set[str]:
    found = rows(
        url,
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema()",
    )
    return {name for (name,) in found}


def version_row(url: str) -> list[tuple[Any, ...]]:
    return rows(url, "SELECT version, dirty FROM schema_migrations")


def columns(url: str, table: str) -> list[tuple[str, str, bool, str | None]]:
    """(name, type, NOT NULL, default) of each column, in order."""
    found = rows(
        url,
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        "       pg_get_expr(d.adbin, d.adrelid)"
        " FROM pg_attribute a"
        " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        (table,),
    )
    return [(name, kind, notnull, default) for name, kind, notnull, default in found]


def schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a migration may change, in comparable form."""
    return {
        "columns": rows(
            url,
            # The rank of a column, not its attnum: a column dropped and added
            # back (011 down, then up) comes back last, with a higher attnum.
            "SELECT table_name, column_name,"
            "       rank() OVER (PARTITION BY table_name ORDER BY ordinal_position),"
            "       data_type,"
            "       character_maximum_length, numeric_precision, numeric_scale,"
            "       is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
            " ORDER BY table_name, ordinal_position",
        ),
        "indexes": rows(
            url,
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() ORDER BY indexname",
        ),
        "constraints": rows(
            url,
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint"
            " WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2",
        ),
        "triggers": rows(
            url,
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE NOT tgisinternal ORDER BY 1",
        ),
        "functions": rows(
            url,
            "SELECT proname FROM pg_proc"
            " WHERE pronamespace = current_schema()::regnamespace ORDER BY 1",
        ),
        "comments": rows(
            url,
            "SELECT c.relname, a.attname, col_description(c.oid, a.attnum)"
            " FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
            " WHERE c.relnamespace = current_schema()::regnamespace"
            "   AND col_description(c.oid, a.attnum) IS NOT NULL ORDER BY 1, 2",
        ),
    }


def write_migration(
    directory: Path, version: int, name: str, up: str, down: str
) -> None:
    (directory / f"{version:03d}_{name}.up.sql").write_text(up, encoding="utf-8")
    (directory / f"{version:03d}_{name}.down.sql").write_text(down, encoding="utf-8")


def copy_shipped(directory: Path, *versions: int) -> None:
    for m in migrate.available():
        if m.version in versions:
            write_migration(directory, m.version, m.name, m.up, m.down)


# -- the files ---------------------------------------------------------------------


def test_available_lists_the_shipped_migrations_in_order() -> None:
    found = [(m.version, m.name) for m in migrate.available()]
    assert found == [
        (1, "initial"),
        (2, "contract"),
        (3, "contract_backfill"),
        (4, "usage_request_index"),
        (5, "usage_dedupe"),
        (6, "usage_request_key"),
        (7, "usage_request_index_drop"),
        (8, "tenant_notify"),
        (9, "usage_daily_totals"),
        (10, "usage_daily_totals_backfill"),
        (11, "key_lifecycle"),
        (12, "usage_totals_shards"),
        (13, "audit_log"),
        (14, "budget_leases"),
        (15, "key_lifecycle_index"),
    ]
    assert all(m.up.strip() and m.down.strip() for m in migrate.available())
    # The files that build indexes concurrently or commit between batches run
    # outside a transaction, as golang-migrate runs every file.
    outside = {
        m.filename(direction)
        for m in migrate.available()
        for direction in ("up", "down")
        if not m.in_transaction(direction)
    }
    assert outside == {
        "003_contract_backfill.up.sql",
        "004_usage_request_index.up.sql",
        "004_usage_request_index.down.sql",
        "005_usage_dedupe.up.sql",
        "006_usage_request_key.up.sql",
        "006_usage_request_key.down.sql",
        "007_usage_request_index_drop.up.sql",
        "007_usage_request_index_drop.down.sql",
        "010_usage_daily_totals_backfill.up.sql",
        "012_usage_totals_shards.up.sql",
        "015_key_lifecycle_index.up.sql",
        "015_key_lifecycle_index.down.sql",
    }


def test_available_rejects_an_unpaired_file(tmp_path: Path) -> None:
    (tmp_path / "001_lonely.up.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    with pytest.raises(migrate.MigrationError, match=r"001_lonely\.up\.sql"):
        migrate.available(tmp_path)


# golang-migrate's database/util_test.go expects these ids for these names, with the
# database name first and the additional names after it, as the postgres driver calls
# GenerateAdvisoryLockId(database, schema, table).
@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("database_name", "schema_name_1", "schema_name_2"), 3743845847),
        (("mydb", "public", "schema_migrations"), None),
    ],
)
def test_advisory_lock_id_is_golang_migrates(
    names: tuple[str, str, str], expected: int | None
) -> None:
    database, schema_name, table = names
    # The algorithm, independently: CRC-32 (IEEE) of the names joined by NUL, the
    # additional names first, times the salt 1486364155 as an unsigned 32-bit int.
    crc = zlib.crc32(f"{schema_name}\0{table}\0{database}".encode())
    independent = crc * 1486364155 % 2**32
    assert migrate.advisory_lock_id(database, schema_name, table) == independent
    if expected is not None:
        assert independent == expected


def test_initial_migration_is_the_original_schema(fresh_db: str) -> None:
    assert migrate.up(fresh_db, 1) == [1]
    ts = "timestamp with time zone"
    assert columns(fresh_db, "tenants") == [
        ("id", "uuid", True, "gen_random_uuid()"),
        ("name", "character varying(255)", True, None),
        ("api_key_hash", "character varying(64)", True, None),
        ("api_key_encrypted", "bytea", False, None),
        ("budget_usd", "numeric(10,2)", False, "0"),
        ("rate_limit_rpm", "integer", False, "60"),
        ("allowed_models", "text[]", False, "'{}'::text[]"),
        ("default_provider", "character varying(50)", False, None),
        ("fallback_providers", "text[]", False, "'{}'::text[]"),
        ("enabled", "boolean", False, "true"),
        ("created_at", ts, False, "now()"),
        ("updated_at", ts, False, "now()"),
    ]
    assert columns(fresh_db, "usage_records") == [
        ("id", "uuid", True, "gen_random_uuid()"),
        ("tenant_id", "uuid", True, None),
        ("request_id", "character varying(255)", True, None),
        ("model", "character varying(255)", True, None),
        ("provider", "character varying(50)", True, None),
        ("input_tokens", "integer", False, "0"),
        ("output_tokens", "integer", False, "0"),
        ("cost_usd", "numeric(10,6)", False, "0"),
        ("cached", "boolean", False, "false"),
        ("latency_ms", "integer", False, "0"),
        ("status", "character varying(20)", False, "'success'::character varying"),
        ("created_at", ts, False, "now()"),
    ]
    assert columns(fresh_db, "admin_users") == [
        ("id", "uuid", True, "gen_random_uuid()"),
        ("username", "character varying(255)", True, None),
        ("password_hash", "character varying(255)", True, None),
        ("role", "character varying(50)", True, "'viewer'::character varying"),
        ("enabled", "boolean", False, "true"),
        ("created_at", ts, False, "now()"),
        ("updated_at", ts, False, "now()"),
    ]
    indexes = dict(schema(fresh_db)["indexes"])
    expected_indexes = {
        "tenants_pkey": "UNIQUE INDEX tenants_pkey ON public.tenants USING btree (id)",
        "tenants_api_key_hash_key": "UNIQUE INDEX tenants_api_key_hash_key"
        " ON public.tenants USING btree (api_key_hash)",
        "idx_tenants_api_key_hash": "INDEX idx_tenants_api_key_hash"
        " ON public.tenants USING btree (api_key_hash)",
        "idx_tenants_enabled": "INDEX idx_tenants_enabled"
        " ON public.tenants USING btree (enabled)",
        "usage_records_pkey": "UNIQUE INDEX usage_records_pkey"
        " ON public.usage_records USING btree (id)",
        "idx_usage_records_tenant_id": "INDEX idx_usage_records_tenant_id"
        " ON public.usage_records USING btree (tenant_id)",
        "idx_usage_records_created_at": "INDEX idx_usage_records_created_at"
        " ON public.usage_records USING btree (created_at)",
        "idx_usage_records_tenant_created": "INDEX idx_usage_records_tenant_created"
        " ON public.usage_records USING btree (tenant_id, created_at)",
        "admin_users_pkey": "UNIQUE INDEX admin_users_pkey"
        " ON public.admin_users USING btree (id)",
        "admin_users_username_key": "UNIQUE INDEX admin_users_username_key"
        " ON public.admin_users USING btree (username)",
        "idx_admin_users_username": "INDEX idx_admin_users_username"
        " ON public.admin_users USING btree (username)",
    }
    for name, definition in expected_indexes.items():
        assert indexes.pop(name) == f"CREATE {definition}"
    assert indexes == {"schema_migrations_pkey": indexes["schema_migrations_pkey"]}
    foreign_keys = [c for c in schema(fresh_db)["constraints"] if "FOREIGN" in c[2]]
    assert foreign_keys == [
        (
            "usage_records",
            "usage_records_tenant_id_fkey",
            "FOREIGN KEY (tenant_id) REFERENCES tenants(id) ON DELETE CASCADE",
        )
    ]
    # The Go service's 001 documents the roles in a comment; it has no CHECK, and a
    # database it created must stay valid, so neither has ours.
    constraints = schema(fresh_db)["constraints"]
    assert [c for c in constraints if c[2].startswith("CHECK")] == []
    assert {(t, c): d for t, c, d in schema(fresh_db)["comments"]} == {
        ("admin_users", "role"): "admin, editor, or viewer",
        (
            "tenants",
            "api_key_encrypted",
        ): "AES-256 encrypted API key for rotation/display",
        ("tenants", "api_key_hash"): "SHA-256 hash of the API key for lookup",
    }


# -- running -----------------------------------------------------------------------


def test_status_of_a_new_database_reads_only(fresh_db: str) -> None:
    state = migrate.status(fresh_db)
    assert (state.version, state.dirty, state.latest) == (None, False, LATEST)
    assert [m.version for m in state.pending] == ALL
    assert not state.up_to_date
    assert tables(fresh_db) == set()


def test_up_down_up_round_trip_leaves_identical_schemas(fresh_db: str) -> None:
    assert migrate.up(fresh_db, 1) == [1]
    at_1 = schema(fresh_db)
    assert migrate.up(fresh_db) == AFTER_1
    at_latest = schema(fresh_db)
    assert migrate.status(fresh_db).up_to_date
    assert migrate.up(fresh_db) == []

    assert migrate.down(fresh_db, len(ALL) - 1) == AFTER_1[::-1]
    assert version_row(fresh_db) == [(1, False)]
    assert schema(fresh_db) == at_1

    assert migrate.up(fresh_db) == AFTER_1
    assert schema(fresh_db) == at_latest

    assert migrate.down(fresh_db, None) == ALL[::-1]
    assert tables(fresh_db) == {"schema_migrations"}
    # golang-migrate's "no version": an empty table, not a row.
    assert version_row(fresh_db) == []
    assert migrate.down(fresh_db) == []

    assert migrate.up(fresh_db) == ALL
    assert schema(fresh_db) == at_latest
    assert version_row(fresh_db) == [(LATEST, False)]


def test_up_to_a_target_and_down_by_steps(fresh_db: str) -> None:
    assert migrate.up(fresh_db, 2) == [1, 2]
    assert migrate.status(fresh_db).version == 2
    with pytest.raises(InvalidInput, match="target"):
        migrate.up(fresh_db, 1)
    with pytest.raises(InvalidInput, match="target"):
        migrate.up(fresh_db, 99)
    with pytest.raises(InvalidInput, match="steps"):
        migrate.down(fresh_db, 0)
    assert migrate.down(fresh_db, 5) == [2, 1]


def unpinned_functions(url: str) -> list[str]:
    """The functions of the schema whose search_path is not pinned (a writer's
    search_path would then decide which tables their triggers touch)."""
    found = rows(
        url,
        "SELECT p.proname FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = current_schema()"
        " AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) c"
        "                 WHERE c LIKE 'search_path=%%')"
        " ORDER BY 1",
    )
    return [name for (name,) in found]


def test_every_function_keeps_its_search_path_at_every_version(fresh_db: str) -> None:
    # A down file's CREATE OR REPLACE FUNCTION drops the SET search_path that an
    # ALTER FUNCTION gave it: each must pin it again.
    latest = migrate.available()[-1].version
    migrate.up(fresh_db)
    assert unpinned_functions(fresh_db) == []
    for version in range(latest - 1, 0, -1):
        migrate.down(fresh_db, 1)
        assert (version, unpinned_functions(fresh_db)) == (version, [])


def golang_migrate_at_version_1(url: str) -> None:
    """What golang-migrate leaves after applying the Go service's 001."""
    initial = migrate.available()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version bigint not null primary key, dirty boolean not null)"
        )
        conn.execute(initial.up)
        conn.execute("INSERT INTO schema_migrations (version, dirty) VALUES (1, false)")


T1 = "10000000-0000-0000-0000-000000000001"
T2 = "10000000-0000-0000-0000-000000000002"


def uid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def test_upgrade_of_a_database_the_go_service_wrote(fresh_db: str) -> None:
    golang_migrate_at_version_1(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as go:
        go.execute(
            "INSERT INTO tenants (id, name, api_key_hash, api_key_encrypted,"
            " budget_usd, rate_limit_rpm, allowed_models, default_provider,"
            " fallback_providers, enabled, created_at, updated_at)"
            " VALUES (%s, 'all nulls', %s, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
            " NULL, NULL)",
            (T1, "a" * 64),
        )
        go.execute(
            "INSERT INTO tenants (id, name, api_key_hash, allowed_models,"
            " fallback_providers) VALUES (%s, 'null elements', %s,"
            " ARRAY['gpt-4o', NULL, 'claude'], ARRAY[NULL]::text[])",
            (T2, "b" * 64),
        )
        usage = (
            "INSERT INTO usage_records (id, tenant_id, request_id, model, provider,"
            " input_tokens, output_tokens, cost_usd, cached, latency_ms, status,"
            " created_at) VALUES (%s, %s, %s, 'm', 'p', %s, %s, %s, %s, %s, %s, %s)"
        )
        t0 = "2024-05-01T12:00:00Z"
        t1 = "2024-05-01T13:00:00Z"
        for row in [
            # (T1, req-1) four times: 2 is the earliest; 4 ties with it, higher id.
            (uid(1), T1, "req-1", 1, 2, "0.000001", False, 5, "success", t1),
            (uid(2), T1, "req-1", 1, 2, "0.000002", False, 5, "success", t0),
            (uid(3), T1, "req-1", 1, 2, "0.000003", None, None, None, None),
            (uid(4), T1, "req-1", 1, 2, "0.000004", True, 5, "error", t0),
            # The same request id for another tenant is no duplicate.
            (uid(5), T2, "req-1", 1, 2, "1.5", False, 5, "success", t0),
            # Every nullable column NULL.
            (uid(6), T1, "req-2", None, None, None, None, None, None, None),
            # (T2, req-3) twice at the same instant: the lower id stays.
            (uid(8), T2, "req-3", 1, 2, "0.25", False, 5, "success", t0),
            (uid(7), T2, "req-3", 1, 2, "0.25", False, 5, "success", t0),
        ]:
            go.execute(usage, row)
    identity = (
        "SELECT id::text, tenant_id::text, request_id, coalesce(cost_usd, 0)"
        " FROM {} ORDER BY id"
    )
    before = rows(fresh_db, sql.SQL(identity).format(sql.Identifier("usage_records")))

    notices: list[migrate.Notice] = []
    assert migrate.up(fresh_db, on_notice=notices.append) == AFTER_1

    assert version_row(fresh_db) == [(LATEST, False)]
    moved = [n for n in notices if n.file == "005_usage_dedupe.up.sql"]
    assert [n.message for n in moved] == [
        "moved 4 duplicate usage_records row(s) (same tenant_id and request_id)"
        " to usage_records_duplicates"
    ]
    assert [n.message for n in notices if n.file == "003_contract_backfill.up.sql"] == [
        "backfilled NULLs in 2 tenants row(s) and 2 usage_records row(s)"
    ]
    # 010 added up the daily totals of the rows that stayed.
    by_rows = rows(
        fresh_db,
        sql.SQL(
            "SELECT tenant_id::text, (created_at AT TIME ZONE 'UTC')::date,"
            " sum(cost_usd), count(*) FROM usage_records GROUP BY 1, 2 ORDER BY 1, 2"
        ),
    )
    by_totals = rows(
        fresh_db,
        sql.SQL(
            "SELECT tenant_id::text, day, sum(cost_usd), sum(records)"
            " FROM usage_daily_totals GROUP BY 1, 2 ORDER BY 1, 2"
        ),
    )
    assert by_totals == by_rows
    assert by_rows
    # Nothing lost: every row is in one of the two tables, cost unchanged.
    kept = rows(fresh_db, sql.SQL(identity).format(sql.Identifier("usage_records")))
    duplicates = rows(
        fresh_db,
        sql.SQL(identity).format(sql.Identifier("usage_records_duplicates")),
    )
    assert sorted(kept + duplicates) == before
    assert [r[0] for r in kept] == [uid(2), uid(5), uid(6), uid(7)]
    assert [r[0] for r in duplicates] == [uid(1), uid(3), uid(4), uid(8)]

    tenants = rows(
        fresh_db,
        "SELECT id::text, api_key_encrypted, budget_usd, rate_limit_rpm,"
        " allowed_models, default_provider, fallback_providers, enabled,"
        " created_at IS NOT NULL, updated_at IS NOT NULL FROM tenants ORDER BY id",
    )
    # enabled NULL was refused by the Go service (`enabled = true`): it stays
    # refused (false), where the default of a missing value would let it in.
    assert tenants == [
        (T1, None, Decimal("0.00"), 60, [], None, [], False, True, True),
        (
            T2,
            None,
            Decimal("0.00"),
            60,
            ["gpt-4o", "claude"],
            None,
            [],
            True,
            True,
            True,
        ),
    ]
    backfilled = rows(
        fresh_db,
        "SELECT input_tokens, output_tokens, cost_usd, cached, latency_ms, status,"
        " created_at IS NOT NULL FROM usage_records WHERE id = %s",
        (uid(6),),
    )
    assert backfilled == [(0, 0, Decimal("0E-10"), False, 0, "success", True)]
    nullable = {
        (table, name)
        for table in ("tenants", "usage_records")
        for name, _, notnull, _ in columns(fresh_db, table)
        if not notnull
    }
    assert nullable == {
        ("tenants", "api_key_encrypted"),
        ("tenants", "default_provider"),
        # The key lifecycle (011): NULL is "no expiry", "no previous key".
        ("tenants", "api_key_expires_at"),
        ("tenants", "previous_api_key_hash"),
        ("tenants", "previous_api_key_expires_at"),
        ("tenants", "api_key_prefix"),
    }
    cost_type = [c[1] for c in columns(fresh_db, "usage_records") if c[0] == "cost_usd"]
    # Widened without a rewrite; 10 places and the range of numeric(20,10) are kept
    # by 002's trigger and CHECK (tests/test_go_compat.py).
    assert cost_type == ["numeric"]
    assert ("usage_records_tenant_request_key",) in rows(
        fresh_db,
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indisunique"
        " AND indisvalid AND indrelid = 'usage_records'::regclass",
    )

    # The Go service's retry of a stored request is skipped, without an error.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        repeat = conn.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider)"
            " VALUES (%s, 'req-1', 'm', 'p')",
            (T1,),
        )
        assert repeat.rowcount == 0

    # Down moves the duplicates back; nothing is lost that way either.
    notices.clear()
    rolled_back = migrate.down(fresh_db, len(ALL) - 1, on_notice=notices.append)
    assert rolled_back == AFTER_1[::-1]
    assert [n.message for n in notices] == [
        "moved 4 row(s) from usage_records_duplicates back to usage_records"
    ]
    assert "usage_records_duplicates" not in tables(fresh_db)
    after = rows(fresh_db, sql.SQL(identity).format(sql.Identifier("usage_records")))
    assert after == before


def test_failed_migration_rolls_back_leaves_dirty_and_blocks(
    fresh_db: str, tmp_path: Path
) -> None:
    copy_shipped(tmp_path, 1)
    write_migration(
        tmp_path,
        2,
        "broken",
        "CREATE TABLE half_done (id int);\nSELECT no_such_column FROM tenants;\n",
        "DROP TABLE half_done;\n",
    )
    with pytest.raises(migrate.MigrationError) as caught:
        migrate.up(fresh_db, source=tmp_path)
    error = caught.value
    assert (error.version, error.file) == (2, "002_broken.up.sql")
    assert isinstance(error.__cause__, psycopg.errors.UndefinedColumn)
    message = str(error)
    assert "002_broken.up.sql failed (line 2)" in message
    assert "no_such_column" in message
    assert "tenantstore migrate force 1" in message

    # The file's own changes were rolled back; 001 stays; the mark stays dirty.
    assert tables(fresh_db) == ORIGINAL_TABLES | {"schema_migrations"}
    assert version_row(fresh_db) == [(2, True)]
    state = migrate.status(fresh_db, source=tmp_path)
    assert (state.version, state.dirty, state.up_to_date) == (2, True, False)

    with pytest.raises(migrate.DirtyDatabase, match="force") as refused:
        migrate.up(fresh_db, source=tmp_path)
    assert refused.value.version == 2
    with pytest.raises(migrate.DirtyDatabase):
        migrate.down(fresh_db, source=tmp_path)
    assert version_row(fresh_db) == [(2, True)]

    migrate.force(fresh_db, 1)
    assert version_row(fresh_db) == [(1, False)]
    # The shipped files take over from there.
    assert migrate.up(fresh_db) == AFTER_1


def test_failed_rollback_of_the_first_migration_is_dirty_at_minus_one(
    fresh_db: str, tmp_path: Path
) -> None:
    write_migration(
        tmp_path, 1, "only", "CREATE TABLE only_one (id int);", "DROP TABLE nothing;"
    )
    assert migrate.up(fresh_db, source=tmp_path) == [1]
    with pytest.raises(migrate.MigrationError, match="force 1"):
        migrate.down(fresh_db, source=tmp_path)
    # As golang-migrate writes it while rolling back its first file.
    assert version_row(fresh_db) == [(-1, True)]
    state = migrate.status(fresh_db, source=tmp_path)
    assert (state.version, state.dirty) == (None, True)
    with pytest.raises(migrate.DirtyDatabase, match="-1"):
        migrate.up(fresh_db, source=tmp_path)
    migrate.force(fresh_db, None)
    assert version_row(fresh_db) == []
    with pytest.raises(InvalidInput, match="version"):
        migrate.force(fresh_db, -1)


def test_a_version_unknown_here_is_refused(fresh_db: str) -> None:
    assert migrate.up(fresh_db) == ALL
    migrate.force(fresh_db, 77)  # past the latest shipped here, from another tool
    with pytest.raises(migrate.MigrationError, match="version 77") as caught:
        migrate.up(fresh_db)
    assert not isinstance(caught.value, migrate.DirtyDatabase)
    assert migrate.status(fresh_db).pending == ()


def test_unreachable_database_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect") as caught:
        migrate.up("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=5")
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_malformed_conninfo_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="conninfo"):
        migrate.status("not = a = conninfo")


# -- locking and concurrency -------------------------------------------------------


def wait_for_waiting_runner(caplog: pytest.LogCaptureFixture) -> None:
    """Return once a runner has said that it waits for the migration lock."""
    wait_until(
        lambda: any(
            "waiting for the migration lock" in r.message for r in caplog.records
        ),
        "a runner waits for the migration lock",
    )


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("", id="database-name"),
        # golang-migrate given a URL names the database by the URL's path.
        pytest.param("/", id="url-path"),
    ],
)
def test_up_waits_while_golang_migrate_holds_its_lock(
    fresh_db: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantstore.migrate")
    dbname = conninfo_to_dict(fresh_db)["dbname"]
    assert isinstance(dbname, str)
    lock_id = migrate.advisory_lock_id(prefix + dbname, "public", "schema_migrations")
    with (
        psycopg.connect(fresh_db, autocommit=True) as golang_migrate,
        ThreadPoolExecutor(1) as pool,
    ):
        golang_migrate.execute("SELECT pg_advisory_lock(%s::bigint)", (lock_id,))
        try:
            running = pool.submit(migrate.up, fresh_db)
            wait_for_waiting_runner(caplog)
            assert not running.done()
            assert migrate.status(fresh_db).version is None
        finally:
            golang_migrate.execute("SELECT pg_advisory_unlock(%s::bigint)", (lock_id,))
        assert running.result(timeout=60) == ALL


def test_concurrent_runners_apply_each_migration_once(fresh_db: str) -> None:
    notices: list[migrate.Notice] = []
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(migrate.up, fresh_db, on_notice=notices.append)
            for _ in range(2)
        ]
        results = sorted((run.result(timeout=120) for run in runs), key=len)
    assert results == [[], ALL]
    # One runner ran the files, each once.
    assert [n.file for n in notices] == [
        "003_contract_backfill.up.sql",
        "005_usage_dedupe.up.sql",
    ]
    assert version_row(fresh_db) == [(LATEST, False)]


# -- 008: notifications ------------------------------------------------------------


def test_every_committed_change_to_tenants_is_notified(fresh_db: str) -> None:
    migrate.up(fresh_db)
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    with (
        psycopg.connect(fresh_db, autocommit=True) as listener,
        psycopg.connect(fresh_db, autocommit=True) as writer,
    ):
        listener.execute("LISTEN tenantstore_tenants")
        with writer.transaction(force_rollback=True):  # never committed: silent
            writer.execute(
                "INSERT INTO tenants (name, api_key_hash) VALUES ('x', %s)", ("f" * 64,)
            )
        inserted = writer.execute(
            "INSERT INTO tenants (id, name, api_key_hash) VALUES (%s, 'a', %s)",
            (T1, a),
        )
        assert inserted.rowcount == 1
        writer.execute("UPDATE tenants SET name = name WHERE id = %s", (T1,))  # no-op
        writer.execute("UPDATE tenants SET api_key_hash = %s WHERE id = %s", (b, T1))
        writer.execute("DELETE FROM tenants WHERE id = %s", (T1,))
        writer.execute(
            "INSERT INTO tenants (id, name, api_key_hash) VALUES (%s, 'c', %s)", (T2, c)
        )
        writer.execute("TRUNCATE tenants CASCADE")
        received = list(listener.notifies(timeout=30, stop_after=5))
    assert {n.channel for n in received} == {"tenantstore_tenants"}
    # Since 011 every row change names the previous keys too (none here).
    none = {"old_previous": None, "new_previous": None}
    assert [json.loads(n.payload) for n in received] == [
        {"op": "INSERT", "id": T1, "old": None, "new": a, **none},
        {"op": "UPDATE", "id": T1, "old": a, "new": b, **none},
        {"op": "DELETE", "id": T1, "old": b, "new": None, **none},
        {"op": "INSERT", "id": T2, "old": None, "new": c, **none},
        {"op": "TRUNCATE"},
    ]


# -- adoption of a database the Go service created with psql ------------------------


def psql_create_001(url: str) -> None:
    """What the Go service does: ``psql -f migrations/001_initial.up.sql``.

    Our 001 is the Go service's file with three comment lines on top
    (test_initial_migration_is_the_original_schema checks the schema it makes).
    """
    text = migrate.available()[0].up  # wherever the package keeps its files
    psql = shutil.which("psql")
    if psql is None:  # the same statements, sent the way psql sends a file's
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(text)
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "001_initial.up.sql"
        path.write_text(text, encoding="utf-8")
        done = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr


def test_a_psql_created_database_is_adopted_at_version_1(
    fresh_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    psql_create_001(fresh_db)
    assert "schema_migrations" not in tables(fresh_db)
    state = migrate.status(fresh_db)
    assert (state.version, state.dirty) == (None, False)
    caplog.set_level(logging.INFO, logger="tenantstore.migrate")
    assert migrate.up(fresh_db) == AFTER_1
    assert version_row(fresh_db) == [(LATEST, False)]
    assert any("recorded as version 1" in r.message for r in caplog.records)


def test_adopting_10000_go_tenants_keeps_every_key_and_every_total(
    fresh_db: str,
) -> None:
    psql_create_001(fresh_db)
    n = 10_000
    with psycopg.connect(fresh_db, autocommit=True) as go:
        # The Go service's tenants: nil slices (NULL), its own key format, hashed as
        # hash_api_key does; every 10th with enabled NULL (refused by the Go
        # service's `enabled = true`), every 7th with a NULL element in an array.
        go.execute(
            "INSERT INTO tenants (id, name, api_key_hash, budget_usd, rate_limit_rpm,"
            " allowed_models, default_provider, fallback_providers, enabled,"
            " created_at, updated_at)"
            " SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid,"
            "        'go ' || g, encode(sha256(convert_to('gw-key-' || g, 'UTF8')),"
            "        'hex'), CASE WHEN g %% 3 = 0 THEN NULL ELSE 10 END, 60,"
            "        CASE WHEN g %% 7 = 0 THEN ARRAY['gpt-4o', NULL] END, NULL, NULL,"
            "        CASE WHEN g %% 10 = 0 THEN NULL ELSE true END, now(), now()"
            " FROM generate_series(1, %s) AS g",
            (n,),
        )
        # Go-era usage: 5 rows per tenant, over three days, NULL costs and created_at
        # here and there, and every 4th request of a tenant recorded twice.
        go.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
            " input_tokens, output_tokens, cost_usd, cached, latency_ms, status,"
            " created_at)"
            " SELECT ('00000000-0000-0000-0000-' || lpad(t::text, 12, '0'))::uuid,"
            "        'req-' || r, 'gpt-4o', 'openai', 10, 20,"
            "        CASE WHEN r = 3 THEN NULL ELSE (t %% 97) * 0.000123 + r END,"
            "        false, 5, 'success',"
            "        CASE WHEN t %% 11 = 0 AND r = 2 THEN NULL"
            "             ELSE timestamptz '2025-01-01 23:00Z' + r * interval '9 hours'"
            "        END"
            " FROM generate_series(1, %s) AS t, generate_series(1, 5) AS r",
            (n,),
        )
        go.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
            " cost_usd, created_at)"
            " SELECT tenant_id, request_id, model, provider, cost_usd + 1, created_at"
            " FROM usage_records WHERE request_id = 'req-4' AND tenant_id::text < %s",
            (uid(n // 4),),
        )
    assert migrate.up(fresh_db) == AFTER_1

    with create_pool(fresh_db, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        usage = PostgresUsageRepository(pool)
        for g in range(1, n + 1):
            if g % 10 == 0:
                with pytest.raises(TenantNotFound):
                    repo.get_by_api_key(f"gw-key-{g}")
                continue
            tenant = repo.get_by_api_key(f"gw-key-{g}")
            assert tenant.id == uid(g)
            assert tenant.fallback_providers == ()
            assert tenant.allowed_models == (("gpt-4o",) if g % 7 == 0 else ())
        sums = dict(
            rows(
                fresh_db,
                "SELECT tenant_id::text, sum(cost_usd) FROM usage_records GROUP BY 1",
            )
        )
        assert len(sums) == n
        since = datetime(2000, 1, 1, tzinfo=UTC)
        for tenant_id, total in sums.items():
            assert usage.get_tenant_total_cost(tenant_id, since) == total
    # Each request once; the extra copies are kept aside.
    assert rows(
        fresh_db,
        "SELECT count(*), count(DISTINCT (tenant_id, request_id)) FROM usage_records",
    ) == [(5 * n, 5 * n)]
    assert rows(fresh_db, "SELECT count(*) FROM usage_records_duplicates") == [
        (n // 4 - 1,)
    ]


def test_a_schema_that_is_not_001_is_refused_untouched_and_the_advice_works(
    fresh_db: str,
) -> None:
    psql_create_001(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("DROP TABLE admin_users")
        conn.execute("ALTER TABLE tenants ALTER COLUMN enabled SET NOT NULL")
        conn.execute("CREATE INDEX usage_by_model ON usage_records (model)")
    before = schema(fresh_db)
    with pytest.raises(migrate.MigrationError) as caught:
        migrate.up(fresh_db)
    message = str(caught.value)
    assert "nothing was changed" in message
    assert "table admin_users is missing" in message
    assert (
        "tenants: column enabled is boolean NOT NULL DEFAULT true,"
        " not boolean DEFAULT true" in message
    )
    assert "usage_records: index usage_by_model is not in it" in message
    # Nothing changed, nothing marked: not even schema_migrations exists.
    assert schema(fresh_db) == before
    assert "schema_migrations" not in tables(fresh_db)
    assert migrate.status(fresh_db).dirty is False

    # The advice: make it match 001, then migrate up again.
    initial = migrate.available()[0].up
    admin = initial[initial.index("CREATE TABLE IF NOT EXISTS admin_users") :]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(admin.split("COMMENT ON COLUMN tenants")[0])
        conn.execute("COMMENT ON COLUMN admin_users.role IS 'admin, editor, or viewer'")
        conn.execute("ALTER TABLE tenants ALTER COLUMN enabled DROP NOT NULL")
        conn.execute("DROP INDEX usage_by_model")
    assert migrate.up(fresh_db) == AFTER_1


def test_a_later_schema_without_its_version_is_refused_and_force_works(
    fresh_db: str,
) -> None:
    assert migrate.up(fresh_db) == ALL
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("DROP TABLE schema_migrations")
    with pytest.raises(migrate.MigrationError) as caught:
        migrate.up(fresh_db)
    message = str(caught.value)
    assert "table usage_daily_totals is not in it" in message
    assert "tenantstore migrate force VERSION" in message
    migrate.force(fresh_db, LATEST)  # the advice
    assert migrate.up(fresh_db) == []
    assert migrate.status(fresh_db).up_to_date


# -- lock timeouts, retries and files outside a transaction -------------------------


@contextmanager
def table_locked(
    url: str, table: str, mode: str = "ACCESS SHARE"
) -> Iterator[psycopg.Connection[Any]]:
    """Hold a lock on `table` (ACCESS SHARE: every ALTER conflicts with it)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            sql.SQL("LOCK TABLE {} IN {} MODE").format(
                sql.Identifier(table), sql.SQL(mode)
            )
        )
        yield conn
        conn.rollback()


def test_a_lock_not_granted_is_retried_then_refused_clean(fresh_db: str) -> None:
    assert migrate.up(fresh_db, 1) == [1]
    with (
        table_locked(fresh_db, "usage_records"),
        pytest.raises(migrate.MigrationError) as caught,
    ):
        migrate.up(fresh_db, lock_timeout=0.05, lock_retries=2)
    error = caught.value
    assert (error.version, error.file) == (2, "002_contract.up.sql")
    assert isinstance(error.__cause__, psycopg.errors.LockNotAvailable)
    message = str(error)
    assert "within lock_timeout (50ms) in 3 attempts" in message
    assert "Nothing changed and nothing is marked dirty" in message
    assert "still says 1, clean" in message
    assert version_row(fresh_db) == [(1, False)]
    # The advice: run it again once that transaction has ended.
    assert migrate.up(fresh_db) == AFTER_1
    with pytest.raises(InvalidInput, match="lock_timeout"):
        migrate.up(fresh_db, lock_timeout=0)
    with pytest.raises(InvalidInput, match="lock_retries"):
        migrate.down(fresh_db, lock_retries=-1)


def test_a_file_outside_a_transaction_that_gives_up_is_dirty_and_the_advice_works(
    fresh_db: str,
) -> None:
    assert migrate.up(fresh_db, 3) == [1, 2, 3]
    # CREATE INDEX CONCURRENTLY (004) needs SHARE UPDATE EXCLUSIVE.
    with (
        table_locked(fresh_db, "usage_records", "SHARE UPDATE EXCLUSIVE"),
        pytest.raises(migrate.MigrationError) as caught,
    ):
        migrate.up(fresh_db, lock_timeout=0.05, lock_retries=1)
    assert caught.value.file == "004_usage_request_index.up.sql"
    message = str(caught.value)
    assert "in 2 attempts" in message
    assert "says 4, dirty" in message
    assert "tenantstore migrate force 3" in message
    assert version_row(fresh_db) == [(4, True)]
    migrate.force(fresh_db, 3)  # the advice, once the lock is gone
    assert migrate.up(fresh_db) == ALL[3:]


def test_a_lock_granted_on_a_retry_lets_the_migration_finish(
    fresh_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert migrate.up(fresh_db, 1) == [1]
    caplog.set_level(logging.WARNING, logger="tenantstore.migrate")
    with ThreadPoolExecutor(1) as pool, table_locked(fresh_db, "tenants"):
        running = pool.submit(
            migrate.up, fresh_db, lock_timeout=0.05, lock_retries=1000
        )
        wait_until(
            lambda: any("retrying in" in r.message for r in caplog.records),
            "the runner retries",
        )
        assert not running.done()
    assert running.result(timeout=60) == AFTER_1


def test_a_failed_concurrent_index_is_rebuilt_when_the_advice_is_followed(
    fresh_db: str, tmp_path: Path
) -> None:
    write_migration(
        tmp_path,
        1,
        "table",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (1), (2);",
        "DROP TABLE t;",
    )
    write_migration(
        tmp_path,
        2,
        "unique",
        f"{migrate.NO_TRANSACTION_MARKER}\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n",
        f"{migrate.NO_TRANSACTION_MARKER}\nDROP INDEX CONCURRENTLY IF EXISTS t_x;\n",
    )
    with pytest.raises(migrate.MigrationError) as caught:
        migrate.up(fresh_db, source=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.errors.UniqueViolation)
    assert "outside a transaction" in message
    assert "tenantstore migrate force 1" in message
    assert version_row(fresh_db) == [(2, True)]
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_x'::regclass"
    assert rows(fresh_db, valid) == [(False,)]  # what the failed build left

    # The advice: fix the cause, force the version before, migrate again.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t WHERE x = 1)")
    migrate.force(fresh_db, 1)
    assert migrate.up(fresh_db, source=tmp_path) == [2]
    assert rows(fresh_db, valid) == [(True,)]
    assert migrate.down(fresh_db, source=tmp_path) == [2]
    assert rows(fresh_db, "SELECT to_regclass('t_x')") == [(None,)]


def test_not_null_is_proven_by_the_checks_without_a_scan(fresh_db: str) -> None:
    """003 sets NOT NULL under ACCESS EXCLUSIVE: PostgreSQL must not scan for it."""
    assert migrate.up(fresh_db, 2) == [1, 2]
    notices: list[migrate.Notice] = []
    debug = make_conninfo(fresh_db, options="-cclient_min_messages=debug1")
    assert migrate.up(debug, 3, on_notice=notices.append) == [3]
    messages = [n.message for n in notices]
    proven = {
        m.split('"')[1]
        for m in messages
        if "are sufficient to prove that it does not contain nulls" in m
    }
    assert proven == {
        f"{table}.{column}"
        for table, columns_ in (
            ("tenants", ("budget_usd", "rate_limit_rpm", "allowed_models",
                         "fallback_providers", "enabled", "created_at", "updated_at")),
            ("usage_records", ("input_tokens", "output_tokens", "cost_usd", "cached",
                               "latency_ms", "status", "created_at")),
        )
        for column in columns_
    }  # fmt: skip
    # Scans: one per VALIDATE CONSTRAINT (14 NOT NULL checks, the cost range; under
    # SHARE UPDATE EXCLUSIVE, which blocks no writer), none for SET NOT NULL.
    assert len([m for m in messages if m.startswith("verifying table")]) == 15
