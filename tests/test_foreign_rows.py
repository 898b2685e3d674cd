"""Rows that other writers leave: read well-typed, disabled, enabled, deleted.

The Go service and psql write `tenants` around our validation (DESIGN, "Sharing one
database with the Go service"): rpm -1, budget -5, a blank name, a hash that is not
64 lowercase hex digits, '' or NULL inside an array, a provider longer than our 50
characters, NULLs where a database before migration 002 allows them, a re-key that
leaves the old key's ciphertext behind. Each row here is written with raw SQL, the
way those writers send it, and read back through the repositories (sync, async,
cached) and the CLI. The in-memory backend cannot hold such rows (its writes
validate, and there is no other way in), so these tests are PostgreSQL's alone,
except where the in-memory backend can be brought into the same state.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tenantstore import (
    AsyncPostgresTenantRepository,
    CachedTenantRepository,
    InMemoryTenantRepository,
    InvalidInput,
    KeyCipher,
    PostgresTenantRepository,
    Tenant,
    TenantNotFound,
    create_async_pool,
    create_pool,
    generate_api_key,
    hash_api_key,
    migrate,
)
from tenantstore.cli import main
from tests.pgserver import scratch_database

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RING = "k1:" + base64.b64encode(bytes(range(64, 96))).decode()
CIPHER = KeyCipher.from_env(RING)

# The Go service's statements (internal/repository/postgres.go), as it sends them.
GO_INSERT = """
    INSERT INTO tenants (id, name, api_key_hash, budget_usd, rate_limit_rpm,
                         allowed_models, default_provider, fallback_providers,
                         enabled, created_at, updated_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
GO_UPDATE = """
    UPDATE tenants
    SET name = %s, api_key_hash = %s, budget_usd = %s, rate_limit_rpm = %s,
        allowed_models = %s, default_provider = %s, fallback_providers = %s,
        enabled = %s, updated_at = %s
    WHERE id = %s
"""

# What our validation rejects, one odd value per row; every other column is normal.
NORMAL: dict[str, Any] = {
    "name": "Go tenant",
    "budget_usd": Decimal("10.00"),
    "rate_limit_rpm": 60,
    "allowed_models": ["gpt-4o"],
    "default_provider": "openai",
    "fallback_providers": ["anthropic"],
    "enabled": True,
}
ODD: dict[str, dict[str, Any]] = {
    "rpm -1": {"rate_limit_rpm": -1},
    "budget -5": {"budget_usd": Decimal("-5")},
    "blank name": {"name": "   "},
    "empty name": {"name": ""},
    "empty model": {"allowed_models": [""]},
    "NULL model": {"allowed_models": [None, "gpt-4o", None]},
    "NULL fallback": {"fallback_providers": [None]},
    "long fallback": {"fallback_providers": ["p" * 60]},
    "2-D models": {"allowed_models": [["a", "b"], ["c", None]]},
    "blank model": {"allowed_models": ["gpt-4o", " "]},
}
# What each odd row reads back as: NULL elements are dropped, the rest as stored.
READ_AS: dict[str, dict[str, Any]] = {
    "NULL model": {"allowed_models": ("gpt-4o",)},
    "NULL fallback": {"fallback_providers": ()},
    # Only psql can store it (the Go service fails to read it): migration 002's
    # trigger flattens it in row-major order as it is written.
    "2-D models": {"allowed_models": ("a", "b", "c")},
}


def go_insert(
    conn: psycopg.Connection[Any], *, api_key_hash: str, **columns: Any
) -> str:
    values = {**NORMAL, **columns}
    tenant_id = str(uuid.uuid4())
    conn.execute(
        GO_INSERT,
        (
            tenant_id,
            values["name"],
            api_key_hash,
            values["budget_usd"],
            values["rate_limit_rpm"],
            values["allowed_models"],
            values["default_provider"],
            values["fallback_providers"],
            values["enabled"],
            T0,
            T0,
        ),
    )
    return tenant_id


def raw_row(conn: psycopg.Connection[Any], tenant_id: str) -> tuple[Any, ...]:
    """Every column but the version, as stored."""
    row = conn.execute(
        "SELECT name, api_key_hash, api_key_encrypted, budget_usd, rate_limit_rpm,"
        " allowed_models, default_provider, fallback_providers, created_at"
        " FROM tenants WHERE id = %s",
        (tenant_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def assert_well_typed(tenant: Tenant) -> None:
    assert type(tenant.id) is str
    assert type(tenant.name) is str
    assert type(tenant.api_key_hash) is str
    assert type(tenant.budget_usd) is Decimal
    assert type(tenant.rate_limit_rpm) is int
    for texts in (tenant.allowed_models, tenant.fallback_providers):
        assert type(texts) is tuple
        assert all(type(t) is str for t in texts)
    assert tenant.default_provider is None or type(tenant.default_provider) is str
    assert type(tenant.enabled) is bool
    for moment in (tenant.created_at, tenant.updated_at):
        assert moment is None or moment.tzinfo is UTC


def authenticates(repo: Any, api_key: str) -> bool:
    try:
        repo.get_by_api_key(api_key)
    except TenantNotFound:
        return False
    return True


@pytest.fixture
def conn(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_db, autocommit=True) as c:
        yield c


@pytest.mark.parametrize("case", list(ODD))
def test_an_odd_row_reads_well_typed_and_authenticates(
    case: str, conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    api_key = generate_api_key()
    tenant_id = go_insert(conn, api_key_hash=hash_api_key(api_key), **ODD[case])
    repo = PostgresTenantRepository(pool)
    expected = {**NORMAL, **ODD[case], **READ_AS.get(case, {})}

    found = repo.get_by_id(tenant_id)
    assert_well_typed(found)
    for column, value in expected.items():
        got = getattr(found, column)
        assert got == (tuple(value) if isinstance(value, list) else value), column
    assert repo.list() == [found]
    assert repo.get_by_api_key(api_key) == found
    assert repo.get_by_api_key_hash(hash_api_key(api_key)) == found
    cached = CachedTenantRepository(repo)
    assert cached.get_by_api_key(api_key) == found
    assert cached.get_by_api_key(api_key) == found  # from memory: the same value
    if case not in READ_AS:  # (a dropped NULL leaves a valid value)
        # `update` still validates what it is given: the odd value is named.
        with pytest.raises(InvalidInput):
            repo.update(dataclasses.replace(found, enabled=False))


@pytest.mark.parametrize("case", list(ODD))
def test_set_enabled_works_on_an_odd_row_and_touches_nothing_else(
    case: str, conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    api_key = generate_api_key()
    tenant_id = go_insert(conn, api_key_hash=hash_api_key(api_key), **ODD[case])
    before = raw_row(conn, tenant_id)
    repo = CachedTenantRepository(PostgresTenantRepository(pool))
    assert authenticates(repo, api_key)  # now cached

    disabled = repo.set_enabled(tenant_id, False)
    assert_well_typed(disabled)
    assert disabled.enabled is False
    assert disabled.updated_at is not None
    assert disabled.updated_at > T0
    assert not authenticates(repo, api_key)
    assert not authenticates(PostgresTenantRepository(pool), api_key)
    assert raw_row(conn, tenant_id) == before  # nothing else was rewritten

    assert repo.set_enabled(tenant_id, True).enabled is True
    assert authenticates(repo, api_key)
    assert raw_row(conn, tenant_id) == before


def test_a_hash_that_is_not_lowercase_hex_reads_but_never_authenticates(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    """Nobody's key hashes to it, here or in the Go service (both hash to
    lowercase hex), so such a row is found by id and never by a key."""
    api_key = generate_api_key()
    upper = go_insert(conn, api_key_hash=hash_api_key(api_key).upper())
    odd = go_insert(conn, api_key_hash="not a hash")
    repo = PostgresTenantRepository(pool)
    for tenant_id, stored in (
        (upper, hash_api_key(api_key).upper()),
        (odd, "not a hash"),
    ):
        found = repo.get_by_id(tenant_id)
        assert_well_typed(found)
        assert found.api_key_hash == stored
        with pytest.raises(TenantNotFound):
            repo.get_by_api_key_hash(stored)
        assert repo.set_enabled(tenant_id, False).enabled is False
    assert not authenticates(repo, api_key)
    assert {t.id for t in repo.list()} == {upper, odd}


def test_odd_rows_read_the_same_through_the_async_repository(
    conn: psycopg.Connection[Any], clean_db: str
) -> None:
    keys = {case: generate_api_key() for case in ODD}
    ids = {
        case: go_insert(conn, api_key_hash=hash_api_key(keys[case]), **ODD[case])
        for case in ODD
    }

    async def read() -> None:
        apool = await create_async_pool(clean_db, min_size=1, max_size=2)
        async with apool:
            arepo = AsyncPostgresTenantRepository(apool)
            with create_pool(clean_db, min_size=1, max_size=1) as pool:
                repo = PostgresTenantRepository(pool)
                assert await arepo.list() == repo.list()
                for case, tenant_id in ids.items():
                    found = await arepo.get_by_api_key(keys[case])
                    assert found == repo.get_by_id(tenant_id)
                    disabled = await arepo.set_enabled(tenant_id, False)
                    assert disabled == repo.get_by_id(tenant_id)
                    assert not authenticates(repo, keys[case])

    asyncio.run(read())


# --- a database the Go service wrote before migration 002: NULLs -------------------


@pytest.fixture(scope="module")
def v1_url() -> Iterator[str]:
    """A database at version 1 (the Go schema), where every column may be NULL,
    plus the columns the statements of the key lifecycle (011) name (NULL too),
    without 011's triggers."""
    with scratch_database() as url:
        migrate.up(url, 1)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE tenants ADD COLUMN api_key_expires_at timestamptz,"
                " ADD COLUMN previous_api_key_hash varchar(64),"
                " ADD COLUMN previous_api_key_expires_at timestamptz,"
                " ADD COLUMN api_key_prefix varchar(8)"
            )
        yield url


def test_nulls_read_as_the_column_defaults_and_null_enabled_is_disabled(
    v1_url: str,
) -> None:
    api_key = generate_api_key()
    refused_key = generate_api_key()
    with psycopg.connect(v1_url, autocommit=True) as conn:
        conn.execute("TRUNCATE tenants CASCADE")
        # The Go service's INSERT with nil slices; psql-style NULLs elsewhere.
        nulls = go_insert(
            conn,
            api_key_hash=hash_api_key(api_key),
            allowed_models=None,
            fallback_providers=None,
            default_provider=None,
        )
        conn.execute(
            "UPDATE tenants SET budget_usd = NULL, rate_limit_rpm = NULL,"
            " created_at = NULL, updated_at = NULL WHERE id = %s",
            (nulls,),
        )
        # enabled IS NULL: the Go service never authenticates it; neither do we.
        refused = go_insert(conn, api_key_hash=hash_api_key(refused_key), enabled=None)
        before = raw_row(conn, refused)

        with create_pool(v1_url, min_size=1, max_size=1) as pool:
            repo = PostgresTenantRepository(pool)
            found = repo.get_by_api_key(api_key)
            assert_well_typed(found)
            assert found.budget_usd == Decimal("0.00")
            assert found.rate_limit_rpm == 60
            assert found.allowed_models == ()
            assert found.fallback_providers == ()
            assert found.default_provider is None
            assert found.created_at is None
            assert found.updated_at is None
            assert repo.get_by_id(nulls) == found

            unknown = repo.get_by_id(refused)
            assert_well_typed(unknown)
            assert unknown.enabled is False
            assert not authenticates(repo, refused_key)
            assert not authenticates(CachedTenantRepository(repo), refused_key)
            assert {t.id for t in repo.list()} == {nulls, refused}

            # set_enabled moves a NULL version to the clock's now.
            disabled = repo.set_enabled(nulls, False)
            assert disabled.updated_at is not None
            assert disabled.updated_at.tzinfo is UTC
            assert not authenticates(repo, api_key)
            assert repo.set_enabled(refused, True).enabled is True
            assert authenticates(repo, refused_key)
            assert raw_row(conn, refused) == before


def test_migrating_flattens_a_multidimensional_array_written_before() -> None:
    """003's backfill cleans what 002's trigger cleans on write: a psql-written 2-D
    array (which array_remove and array_position refuse) does not stop the
    migration, and reads back flattened, NULL elements dropped."""
    api_key = generate_api_key()
    with scratch_database() as url:
        migrate.up(url, 1)
        with psycopg.connect(url, autocommit=True) as conn:
            tenant_id = go_insert(
                conn,
                api_key_hash=hash_api_key(api_key),
                allowed_models=[["a", None], ["b", "c"]],
                fallback_providers=[None, "openai"],
            )
        migrate.up(url)
        with create_pool(url, min_size=1, max_size=1) as pool:
            found = PostgresTenantRepository(pool).get_by_api_key(api_key)
    assert found.id == tenant_id
    assert found.allowed_models == ("a", "b", "c")
    assert found.fallback_providers == ("openai",)


# --- the CLI on such rows ----------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main([*argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out + captured.err


@pytest.mark.parametrize("case", list(ODD))
def test_the_cli_disables_enables_shows_and_deletes_an_odd_row(
    case: str,
    conn: psycopg.Connection[Any],
    pool: ConnectionPool,
    clean_db: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", clean_db)
    api_key = generate_api_key()
    tenant_id = go_insert(conn, api_key_hash=hash_api_key(api_key), **ODD[case])
    repo = PostgresTenantRepository(pool)

    assert cli(capsys, "tenant", "disable", tenant_id) == (
        0,
        f"tenant {tenant_id} disabled\n",
    )
    assert not authenticates(repo, api_key)
    status, out = cli(capsys, "tenant", "show", tenant_id, "--json")
    assert status == 0
    assert '"enabled": false' in out
    assert cli(capsys, "tenant", "list")[0] == 0
    assert cli(capsys, "tenant", "enable", tenant_id) == (
        0,
        f"tenant {tenant_id} enabled\n",
    )
    assert authenticates(repo, api_key)
    status, out = cli(capsys, "tenant", "delete", tenant_id, "--yes")
    assert status == 0
    assert not authenticates(repo, api_key)
    with pytest.raises(TenantNotFound):
        repo.get_by_id(tenant_id)


# --- a re-key that leaves the old ciphertext behind --------------------------------


def go_rekey(conn: psycopg.Connection[Any], tenant: Tenant, new_key: str) -> None:
    conn.execute(
        GO_UPDATE,
        (
            tenant.name,
            hash_api_key(new_key),
            tenant.budget_usd,
            tenant.rate_limit_rpm,
            list(tenant.allowed_models),
            tenant.default_provider,
            list(tenant.fallback_providers),
            tenant.enabled,
            T0 + timedelta(hours=1),
            tenant.id,
        ),
    )


def test_reveal_never_returns_a_key_the_go_service_replaced(
    conn: psycopg.Connection[Any], pool: ConnectionPool, clean_db: str
) -> None:
    repo = PostgresTenantRepository(pool, cipher=CIPHER)
    old_key = generate_api_key()
    tenant = repo.create(
        Tenant(name="Acme", api_key_hash=hash_api_key(old_key)), api_key=old_key
    )
    assert repo.reveal_api_key(tenant.id) == old_key
    new_key = generate_api_key()
    go_rekey(conn, tenant, new_key)
    assert raw_row(conn, tenant.id)[2] is not None  # the old ciphertext is there

    assert repo.reveal_api_key(tenant.id) is None
    assert CachedTenantRepository(repo).reveal_api_key(tenant.id) is None
    assert not authenticates(repo, old_key)
    assert authenticates(repo, new_key)

    async def reveal() -> str | None:
        apool = await create_async_pool(clean_db, min_size=1, max_size=1)
        async with apool:
            arepo = AsyncPostgresTenantRepository(apool, cipher=CIPHER)
            return await arepo.reveal_api_key(tenant.id)

    assert asyncio.run(reveal()) is None
    # Re-keying back to the old key makes its copy current again.
    go_rekey(conn, tenant, old_key)
    assert repo.reveal_api_key(tenant.id) == old_key


def test_reveal_in_memory_answers_by_the_same_rule() -> None:
    """Through its API the in-memory backend drops a copy whose key is replaced,
    so the state above cannot arise there; put it there by hand, as the Go
    service's UPDATE does to a row, and the answer is the same: None."""
    repo = InMemoryTenantRepository(cipher=CIPHER)
    old_key = generate_api_key()
    tenant = repo.create(
        Tenant(name="Acme", api_key_hash=hash_api_key(old_key)), api_key=old_key
    )
    copy = repo._state.encrypted[tenant.id]
    rekeyed = repo.update(
        dataclasses.replace(tenant, api_key_hash=hash_api_key(generate_api_key()))
    )
    assert repo.reveal_api_key(tenant.id) is None  # dropped by the update
    repo._state.encrypted[tenant.id] = copy  # the old copy, left behind
    assert repo.reveal_api_key(rekeyed.id) is None


def test_the_cli_says_why_it_cannot_reveal_a_replaced_key(
    conn: psycopg.Connection[Any],
    pool: ConnectionPool,
    clean_db: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", clean_db)
    monkeypatch.setenv("TENANTSTORE_CIPHER_KEYS", RING)
    repo = PostgresTenantRepository(pool, cipher=CIPHER)
    old_key = generate_api_key()
    tenant = repo.create(
        Tenant(name="Acme", api_key_hash=hash_api_key(old_key)), api_key=old_key
    )
    assert cli(capsys, "tenant", "reveal-key", tenant.id) == (
        0,
        old_key + "\n",
    )
    go_rekey(conn, tenant, generate_api_key())
    status, out = cli(capsys, "tenant", "reveal-key", tenant.id)
    assert status == 1
    assert "belongs to an older key" in out
    assert old_key not in out
