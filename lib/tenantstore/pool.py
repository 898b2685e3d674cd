"""Pool factories with the original service's settings, sync and async.

The Go service ran `SetMaxOpenConns(25)`, `SetMaxIdleConns(5)` and
`SetConnMaxLifetime(5 * time.Minute)`; these pools keep the same shape (at most 25
connections, 5 kept open, each replaced after 5 minutes) and hand out autocommit
connections, so a single-statement read costs one round trip. Each connection is
set up in one round trip (UTC, and the server-side `statement_timeout`), bounded by
`connect_timeout`, and the pool's connection attempts are recorded so that a pool
timeout can tell an unreachable database from a busy one (`_pgerrors`). The same
round trip tells a connection through a pooler such as PgBouncer (`_pooler`),
which then prepares nothing and is left no session setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection, Connection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import _acompat, _pgerrors, _pooler

__all__ = [
    "MAX_LIFETIME",
    "MAX_SIZE",
    "MIN_SIZE",
    "TIMEOUT",
    "create_async_pool",
    "create_pool",
]

MAX_SIZE = 25
MIN_SIZE = 5
MAX_LIFETIME = 300.0
TIMEOUT: Final = 5.0
"""The default call bound, for pools and repositories alike (seconds)."""


# Sessions in UTC: psycopg then returns timestamps in `datetime.UTC` itself, and
# turning rows into models needs no time-zone conversion. statement_timeout: the
# server cancels a statement still running after the call's timeout, so a slow
# (but alive) database fails with a plain StoreUnavailable and keeps its
# connection, before the client-side deadline would shut a dead path down.
# The same statement tells a connection through a pooler (`_pooler`): the server
# compares its process id with the one the handshake gave the client and sets
# statement_timeout only when they agree. Through a pooler the session setting
# would land on whichever server connection ran it and stay there, for other
# clients (TimeZone is one PgBouncer tracks per client and restores itself).
_SETUP: Final = (
    "SELECT set_config('TimeZone', 'UTC', false),"
    " CASE WHEN pg_backend_pid() = %s"
    " THEN set_config('statement_timeout', %s, false) END,"
    " pg_backend_pid()"
)

_WATCHDOG: Final = _acompat.Watchdog()
_AWATCHDOG: Final = _acompat.AWatchdog()


def _statement_timeout(timeout: float) -> str:
    return f"{max(1, round(timeout * 1000))}ms"


# Applied unless the conninfo says otherwise. An idle pooled connection sends
# nothing, so a host that stopped answering (crashed, partitioned: no ACKs) would be
# found only by the next call's deadline; with keepalives the kernel marks such a
# connection failed within idle + interval * count = 11 s, and the next call finds
# it broken at once (and a read retries on a fresh one). A path that still ACKs
# (a frozen proxy, a stopped backend) is the deadline's job: keepalives never fire.
_KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
}


def _kwargs(
    conninfo: str, connect_timeout: float, health: _pgerrors.PoolHealth
) -> Callable[[], dict[str, Any]]:
    given = conninfo_to_dict(conninfo)
    kwargs: dict[str, Any] = {
        key: value for key, value in _KEEPALIVES.items() if key not in given
    }
    kwargs.update(autocommit=True, connect_timeout=max(1, round(connect_timeout)))

    # psycopg_pool resolves a callable `kwargs` before every connection attempt:
    # the hook that tells `_pgerrors.PoolHealth` an attempt started.
    def resolve() -> dict[str, Any]:
        health.attempting()
        return kwargs

    return resolve


def _configure(
    timeout: float, connect_timeout: float, health: _pgerrors.PoolHealth
) -> Callable[[Connection[Any]], None]:
    setting = _statement_timeout(timeout)

    def configure(conn: Connection[Any]) -> None:
        # Bounded like any call: a path that froze after the handshake would
        # otherwise hold one of the pool's few workers forever.
        token = _WATCHDOG.arm(conn, connect_timeout)
        try:
            row = conn.execute(_SETUP, (conn.info.backend_pid, setting)).fetchone()
        except BaseException:
            _WATCHDOG.disarm(token)
            health.setup_failed()
            conn.close()
            raise
        if _WATCHDOG.disarm(token):
            health.setup_failed()
            conn.close()
            raise psycopg.OperationalError("setting up a new connection took too long")
        if row is not None and _pooler.behind_pooler(conn.info.backend_pid, row[2]):
            _pooler.unprepared(conn)
        health.connected()

    return configure


def _aconfigure(
    timeout: float, connect_timeout: float, health: _pgerrors.PoolHealth
) -> Callable[[AsyncConnection[Any]], Any]:
    setting = _statement_timeout(timeout)

    async def configure(conn: AsyncConnection[Any]) -> None:
        token = _AWATCHDOG.arm(conn, connect_timeout)
        try:
            cur = await conn.execute(_SETUP, (conn.info.backend_pid, setting))
            row = await cur.fetchone()
        except BaseException:
            _AWATCHDOG.disarm(token)
            health.setup_failed()
            await conn.close()
            raise
        if _AWATCHDOG.disarm(token):
            health.setup_failed()
            await conn.close()
            raise psycopg.OperationalError("setting up a new connection took too long")
        if row is not None and _pooler.behind_pooler(conn.info.backend_pid, row[2]):
            _pooler.unprepared(conn)
        health.connected()

    return configure


def create_pool(
    conninfo: str,
    *,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    max_lifetime: float = MAX_LIFETIME,
    timeout: float = TIMEOUT,
    connect_timeout: float = 5.0,
    name: str = "tenantstore",
) -> ConnectionPool:
    """An open psycopg pool for the repositories (close it when done).

    `timeout` (seconds) bounds the wait for a free connection and, as the server's
    `statement_timeout`, each statement: past either a repository call raises
    `StoreUnavailable` instead of hanging a request. Repositories built on this pool
    take the same `timeout` by default. `connect_timeout` bounds each connection
    attempt (the handshake and the session setup). Connections get TCP keepalives
    unless `conninfo` sets them.

    `conninfo` may go through a pooler in transaction mode (PgBouncer): each
    connection tells at setup, and one through a pooler prepares no statement
    (whatever a repository's `prepare`) and gets no `statement_timeout` (it would
    stay on the pooler's server connection; the client-side bound still holds).
    """
    health = _pgerrors.PoolHealth()
    pool = ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        max_lifetime=max_lifetime,
        timeout=timeout,
        kwargs=_kwargs(conninfo, connect_timeout, health),
        configure=_configure(timeout, connect_timeout, health),
        name=name,
        open=False,
    )
    health.bind(pool)
    pool.open()
    return pool


async def create_async_pool(
    conninfo: str,
    *,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    max_lifetime: float = MAX_LIFETIME,
    timeout: float = TIMEOUT,  # noqa: ASYNC109  (the pool's wait bound, as in psycopg_pool)
    connect_timeout: float = 5.0,
    name: str = "tenantstore",
) -> AsyncConnectionPool:
    """`create_pool` for asyncio: an open `AsyncConnectionPool`."""
    health = _pgerrors.PoolHealth()
    pool = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        max_lifetime=max_lifetime,
        timeout=timeout,
        kwargs=_kwargs(conninfo, connect_timeout, health),
        configure=_aconfigure(timeout, connect_timeout, health),
        name=name,
        open=False,
    )
    health.bind(pool)
    await pool.open()
    return pool
