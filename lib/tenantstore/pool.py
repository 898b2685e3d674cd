"""Pool factories with the original service's settings, sync and async.

The Go service ran `SetMaxOpenConns(25)`, `SetMaxIdleConns(5)` and
`SetConnMaxLifetime(5 * time.Minute)`; these pools keep the same shape (at most 25
connections, 5 kept open, each replaced after 5 minutes) and hand out autocommit
connections, so a single-statement read costs one round trip.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ["create_async_pool", "create_pool"]

MAX_SIZE = 25
MIN_SIZE = 5
MAX_LIFETIME = 300.0


# Sessions in UTC: psycopg then returns timestamps in `datetime.UTC` itself, and
# turning rows into models needs no time-zone conversion.
_SET_UTC = "SET TIME ZONE 'UTC'"


def _configure(conn: Connection[Any]) -> None:
    conn.execute(_SET_UTC)


async def _aconfigure(conn: AsyncConnection[Any]) -> None:
    await conn.execute(_SET_UTC)


def _kwargs(connect_timeout: float) -> dict[str, Any]:
    return {"autocommit": True, "connect_timeout": max(1, round(connect_timeout))}


def create_pool(
    conninfo: str,
    *,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    max_lifetime: float = MAX_LIFETIME,
    timeout: float = 5.0,
    connect_timeout: float = 5.0,
    name: str = "tenantstore",
) -> ConnectionPool:
    """An open psycopg pool for the repositories (close it when done).

    `timeout` bounds the wait for a free connection: past it a repository call
    raises `StoreUnavailable` instead of hanging a request.
    """
    return ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        max_lifetime=max_lifetime,
        timeout=timeout,
        kwargs=_kwargs(connect_timeout),
        configure=_configure,
        name=name,
        open=True,
    )


async def create_async_pool(
    conninfo: str,
    *,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    max_lifetime: float = MAX_LIFETIME,
    timeout: float = 5.0,  # noqa: ASYNC109  (the pool's wait bound, as in psycopg_pool)
    connect_timeout: float = 5.0,
    name: str = "tenantstore",
) -> AsyncConnectionPool:
    """`create_pool` for asyncio: an open `AsyncConnectionPool`."""
    pool = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        max_lifetime=max_lifetime,
        timeout=timeout,
        kwargs=_kwargs(connect_timeout),
        configure=_aconfigure,
        name=name,
        open=False,
    )
    await pool.open()
    return pool
