"""PostgreSQL fixtures: a fresh, migrated database per test session.

`pg_server_url` is a server the tests may create databases on (`DATABASE_URL`, else
an embedded PostgreSQL). `pg_url` is a database created for this session and
migrated to the latest version; `clean_db` empties its tables before a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import create_async_pool, create_pool
from tests.pgserver import scratch_database, server_url

TABLES = "tenants, usage_records, admin_users"


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return server_url()


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    from tenantstore import migrate

    with scratch_database() as url:
        migrate.up(url)
        yield url


def truncate(url: str) -> None:
    """Empty the tenant, usage and admin tables and the audit log of the test
    database (TRUNCATE is itself audited: the log is emptied after it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} CASCADE")
        conn.execute("TRUNCATE audit_log RESTART IDENTITY")


@pytest.fixture
def clean_db(pg_url: str) -> str:
    truncate(pg_url)
    return pg_url


@pytest.fixture
def pool(clean_db: str) -> Iterator[ConnectionPool]:
    with create_pool(clean_db, min_size=1, max_size=4) as p:
        yield p


@pytest.fixture(scope="session")
def session_pool(pg_url: str) -> Iterator[ConnectionPool]:
    """One pool for hypothesis tests, whose examples truncate for themselves."""
    with create_pool(pg_url, min_size=1, max_size=4) as p:
        yield p


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


async def _open_async_pool(url: str) -> AsyncConnectionPool:
    return await create_async_pool(url, min_size=1, max_size=4)


@pytest.fixture
def apool(clean_db: str, runner: asyncio.Runner) -> Iterator[AsyncConnectionPool]:
    p = runner.run(_open_async_pool(clean_db))
    try:
        yield p
    finally:
        runner.run(p.close())
