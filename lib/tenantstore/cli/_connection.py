"""One plain connection per command, and who the command acts as.

A one-shot command connects once, directly (no pool: a pool would retry in the
background and report only its own timeout, seconds later): "connection refused"
comes back at once, in the driver's words. `as_pool` gives the repositories the
two pool methods they use over that one connection.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, cast

import psycopg
from psycopg_pool import ConnectionPool

from .._oneshot import connect as open_connection
from .._oneshot import first_line
from ..errors import DatabaseUnreachable

__all__ = ["CONNECT_TIMEOUT", "actor", "as_pool", "connect"]

CONNECT_TIMEOUT: Final = 5  # seconds, unless the URL says connect_timeout


@contextmanager
def connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection in UTC, closed when the command ends."""
    conn = open_connection(url, field="--database-url", connect_timeout=CONNECT_TIMEOUT)
    with conn:
        try:
            conn.execute("SET TIME ZONE 'UTC'")
        except psycopg.Error as exc:
            raise DatabaseUnreachable(
                f"lost the connection to PostgreSQL: {first_line(exc)}"
            ) from exc
        yield conn


class _OneConnection:
    """`getconn`/`putconn` (and `connection()`) over one connection: what the
    repositories ask of a pool. Nothing is pooled or reconnected."""

    # The repositories' call bound (a pool's wait timeout): one command, one bound.
    timeout = 30.0

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        return self._conn

    def putconn(self, conn: psycopg.Connection[Any]) -> None:
        pass

    @contextmanager
    def connection(
        self, timeout: float | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        yield self._conn


def as_pool(conn: psycopg.Connection[Any]) -> ConnectionPool:
    """`conn` in the shape of a pool, for a repository."""
    return cast(ConnectionPool, _OneConnection(conn))


def actor(given: str | None) -> str:
    """Who the command acts as, for the audit log: --actor, else the OS user."""
    if given is not None:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "unknown"
