"""Telling a connection made through a pooler (PgBouncer) from a direct one.

A pooler answers the client's handshake itself: the process id in the
BackendKeyData it sends (`conn.info.backend_pid`) is its own, not that of the
server process that runs the client's statements (`SELECT pg_backend_pid()`);
directly, the two are one number. The check costs nothing where it rides on a
statement sent anyway (the pool's session setup), one round trip elsewhere.

What follows from it lives here too, shared by both twins and the migration
runner, with no I/O: a pooled connection prepares no statement (in transaction
mode a statement prepared on one server connection is missing on the next, or
clashes with another client's of the same name: PgBouncer 1.18 keeps none), and
what needs one session for longer than a transaction (the listener's LISTEN, the
migration runner's advisory lock) refuses it. Session-mode pooling cannot be told
apart from transaction mode, so it is refused alike: a direct URL always works.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import BaseConnection

from .errors import InvalidInput

__all__ = ["SERVER_PID", "behind_pooler", "refused", "unprepared"]

SERVER_PID: Final = "SELECT pg_backend_pid()"
"""The server process id, to compare with `conn.info.backend_pid`."""


def behind_pooler(client_pid: int, server_pid: int) -> bool:
    """True when the handshake's process id is not the server process's: a pooler
    (or anything else speaking for the server) stands between them."""
    return client_pid != server_pid


def unprepared(conn: BaseConnection[Any]) -> None:
    """Make `conn` prepare nothing: with `prepare_threshold` None psycopg prepares
    no statement, not even one executed with ``prepare=True``."""
    conn.prepare_threshold = None


def refused(what: str, why: str, instead: str) -> InvalidInput:
    """The error for `what` given a pooled `conninfo`: why it cannot work, and the
    direct URL to give `instead`."""
    return InvalidInput(
        "conninfo",
        f"reaches PostgreSQL through a connection pooler (PgBouncer or similar): "
        f"{what} {why}, which a pooler does not keep from one transaction to the "
        f"next; give {instead} a direct URL to the database (not the pooler's)",
    )
