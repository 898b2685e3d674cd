"""Connections that fail because of the connection, not the statement, are cured.

Item 7: an `ALTER TABLE ... ALTER COLUMN TYPE` under warm prepared statements makes
the server refuse them ("cached plan must not change result type") on every
connection that holds them; the repository deallocates and retries once. Item 8: a
connection that hit a read-only session, or that the server ended, never goes back
into the pool. Real schema changes, real `ALTER DATABASE`, real terminated backends,
on scratch databases of these tests' own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors as pge
from psycopg import sql

from tenantstore import (
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    DatabaseUnreachable,
    PostgresTenantRepository,
    PostgresUsageRepository,
    StoreUnavailable,
    Tenant,
    UsageRecord,
    create_async_pool,
    create_pool,
    generate_api_key,
    hash_api_key,
    migrate,
)
from tests.pgserver import scratch_database, server_url

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def new_tenant() -> tuple[Tenant, str]:
    key = generate_api_key()
    return Tenant(name="Acme", api_key_hash=hash_api_key(key)), key


def new_record(tenant: Tenant, request_id: str) -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant.id, request_id=request_id, model="m", provider="p"
    )


@pytest.fixture
def scratch_db(pg_server_url: str) -> Iterator[str]:
    """A migrated database of this test's own: its schema and settings may change."""
    with scratch_database("tenantstore_health") as url:
        migrate.up(url)
        yield url


def admin(url: str, statement: sql.Composed | str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def alter_rate_limit(url: str, type_: str) -> None:
    # Changes the type of a column every tenant statement returns.
    admin(url, f"ALTER TABLE tenants ALTER COLUMN rate_limit_rpm TYPE {type_}")


# -- item 7: stale prepared statements ---------------------------------------------


def test_column_type_change_under_warm_statements(scratch_db: str) -> None:
    with create_pool(scratch_db, min_size=2, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        repo.create(tenant)
        # Warm both connections: each prepares the lookups.
        with pool.connection(), pool.connection():
            pass
        for _ in range(4):
            assert repo.get_by_api_key(key).id == tenant.id
            assert repo.get_by_id(tenant.id).rate_limit_rpm == tenant.rate_limit_rpm
        for type_ in ("bigint", "integer"):  # changed, then changed back
            alter_rate_limit(scratch_db, type_)
            for _ in range(4):  # every warm connection meets the change
                assert repo.get_by_api_key(key).id == tenant.id
                assert repo.get_by_id(tenant.id).id == tenant.id
                assert len(repo.list()) == 1
            # A write that returns rows is replanned too (and is not duplicated).
            other, _ = new_tenant()
            assert repo.create(other).id == other.id
            repo.delete(other.id)
        assert [t.id for t in repo.list()] == [tenant.id]


def test_async_column_type_change_under_warm_statements(
    scratch_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        pool = await create_async_pool(scratch_db, min_size=2, max_size=2)
        try:
            repo = AsyncPostgresTenantRepository(pool)
            tenant, key = new_tenant()
            await repo.create(tenant)
            for _ in range(4):
                assert (await repo.get_by_api_key(key)).id == tenant.id
            for type_ in ("bigint", "integer"):
                alter_rate_limit(scratch_db, type_)
                for _ in range(4):
                    assert (await repo.get_by_api_key(key)).id == tenant.id
                    assert (await repo.get_by_id(tenant.id)).id == tenant.id
                other, _ = new_tenant()
                assert (await repo.create(other)).id == other.id
                await repo.delete(other.id)
            assert [t.id for t in await repo.list()] == [tenant.id]
        finally:
            await pool.close()

    runner.run(scenario())


# -- item 8: read-only sessions ---------------------------------------------------


def set_read_only(url: str, on: bool) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    assert isinstance(name, str)
    admin(
        server_url(),  # not `url`: a read-only database cannot switch itself back
        sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
            sql.Identifier(name), sql.SQL("on" if on else "off")
        ),
    )


def test_read_only_connections_are_not_pooled_again(scratch_db: str) -> None:
    with create_pool(scratch_db, min_size=1, max_size=1) as pool:
        tenants = PostgresTenantRepository(pool)
        usage = PostgresUsageRepository(pool)
        tenant, key = new_tenant()
        tenants.create(tenant)
        set_read_only(scratch_db, True)
        try:
            # The setting reaches new sessions only (as a failover to a standby
            # does): renew the pool's.
            pool.drain()
            with pytest.raises(StoreUnavailable) as info:
                tenants.create(new_tenant()[0])
            assert not isinstance(info.value, DatabaseUnreachable)
            assert isinstance(info.value.__cause__, pge.ReadOnlySqlTransaction)
            with pytest.raises(StoreUnavailable):
                usage.record(new_record(tenant, "ro"))
            assert tenants.get_by_api_key(key).id == tenant.id  # reads still work
        finally:
            set_read_only(scratch_db, False)
        # The very next write succeeds: no read-only session is used for it.
        second, _ = new_tenant()
        assert tenants.create(second).id == second.id
        assert usage.record(new_record(tenant, "rw")) is True
        assert len(usage.get_tenant_usage(tenant.id, EPOCH)) == 1


def test_async_read_only_connections_are_not_pooled_again(
    scratch_db: str, runner: asyncio.Runner
) -> None:
    async def scenario() -> None:
        pool = await create_async_pool(scratch_db, min_size=1, max_size=1)
        try:
            usage = AsyncPostgresUsageRepository(pool)
            tenant, _ = new_tenant()
            await AsyncPostgresTenantRepository(pool).create(tenant)
            set_read_only(scratch_db, True)
            try:
                await pool.drain()
                with pytest.raises(StoreUnavailable) as info:
                    await usage.record(new_record(tenant, "ro"))
                assert isinstance(info.value.__cause__, pge.ReadOnlySqlTransaction)
            finally:
                set_read_only(scratch_db, False)
            assert await usage.record(new_record(tenant, "rw")) is True
        finally:
            await pool.close()

    runner.run(scenario())


# -- item 8: sessions the server ended ----------------------------------------------


def terminate_pool_backends(url: str) -> int:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_terminated_connection_is_replaced(scratch_db: str) -> None:
    with create_pool(scratch_db, min_size=1, max_size=1) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        tenants.create(tenant)
        assert terminate_pool_backends(scratch_db) == 1
        # A write is not retried (it may have happened): the session is gone.
        with pytest.raises(DatabaseUnreachable):
            tenants.create(new_tenant()[0])
        # ... and that connection is gone with it: the very next write succeeds.
        second, _ = new_tenant()
        assert tenants.create(second).id == second.id
        # A read meets a terminated session too, and retries on a fresh one.
        assert terminate_pool_backends(scratch_db) == 1
        assert tenants.get_by_api_key(key).id == tenant.id
