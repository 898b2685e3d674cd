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
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ..errors import DatabaseUnreachable, InvalidInput

__all__ = ["CONNECT_TIMEOUT", "actor", "as_pool", "connect"]

CONNECT_TIMEOUT: Final = 5  # seconds, unless the URL says connect_timeout


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection in UTC, closed when the command ends."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        # The driver's message may quote the string, password included: keep it out.
        raise InvalidInput(
            "--database-url", "is not a PostgreSQL connection string or URL"
        ) from exc
    if "connect_timeout" not in params:
        url = make_conninfo(url, connect_timeout=CONNECT_TIMEOUT)
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        # libpq's first line names the host and port and why, never the password.
        raise DatabaseUnreachable(
            f"cannot connect to PostgreSQL: {_first_line(exc)}"
        ) from exc
    with conn:
        try:
            conn.execute("SET TIME ZONE 'UTC'")
        except psycopg.Error as exc:
            raise DatabaseUnreachable(
                f"lost the connection to PostgreSQL: {_first_line(exc)}"
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
