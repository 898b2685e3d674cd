"""One plain autocommit connection for one-shot work: the migration runner, the CLI.

No pool: a pool retries in the background and reports only its own timeout, seconds
later, whereas one direct connection says at once, in the driver's words, why it
cannot be made ("connection refused"). Nothing here keeps state.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import DatabaseUnreachable, InvalidInput

__all__ = ["connect", "first_line"]


def first_line(exc: BaseException) -> str:
    """The first line of a driver error: host, port and why, never a parameter."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(
    conninfo: str, *, field: str, connect_timeout: int
) -> psycopg.Connection[Any]:
    """An open autocommit connection to `conninfo` (the caller closes it).

    `connect_timeout` applies unless `conninfo` sets its own (libpq waits forever
    by default). Raises `InvalidInput` naming `field` for a malformed `conninfo`
    (never quoting it: it may hold a password), `DatabaseUnreachable` when the
    server cannot be reached.
    """
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise InvalidInput(
            field, "is not a PostgreSQL connection string or URL"
        ) from exc
    if "connect_timeout" not in params:
        conninfo = make_conninfo(conninfo, connect_timeout=connect_timeout)
    try:
        return psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise DatabaseUnreachable(
            f"cannot connect to PostgreSQL: {first_line(exc)}"
        ) from exc
