"""A real PgBouncer in transaction mode in front of the test server.

`pgbouncer` starts Debian's `pgbouncer` once per session (its own directory, a
free port on 127.0.0.1, `auth_type = trust`) in front of the server the suite
uses, and stops it at the end. Every database of that server is reachable
through it under its own name: `pgbouncer.url(direct_url)` is `direct_url`
through the pooler. Its pool is small (`POOL_SIZE` server connections per
database and user), so a handful of clients really share server connections.

Each server connection it opens starts in another time zone (`connect_query`):
a session setting the library relied on without PgBouncer tracking it would show.

Without the binary the tests that need it are skipped, except in CI (`CI` set),
where that is a failure: CI installs it (`.ci/run`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Final

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.polling import wait_until
from tests.tcpproxy import server_address, tcp_proxy

__all__ = ["POOL_SIZE", "PgBouncer", "pgbouncer"]

POOL_SIZE: Final = 2
"""Server connections PgBouncer keeps per (database, user)."""

# Not UTC: each server connection begins its life in this zone.
SERVER_TIME_ZONE: Final = "America/New_York"


def _executable() -> str:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if os.access(found, os.X_OK):
        return found
    reason = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have it (.ci/run installs it)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> str | None:
    """The user PgBouncer runs as: it refuses to run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.fail("running as root, and neither user postgres nor nobody exists")


class PgBouncer:
    """A running PgBouncer: its port, and URLs through it."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    def url(self, direct: str) -> str:
        """`direct` (a URL of the test server) through this PgBouncer."""
        params = conninfo_to_dict(direct)
        params["host"] = "127.0.0.1"
        params["port"] = str(self.port)
        params.pop("hostaddr", None)
        return make_conninfo("", **params)


def _config(work: Path, port: int, host: str, server_port: int, user: str) -> str:
    return (
        "[databases]\n"
        f"* = host={host} port={server_port}"
        f" connect_query='SET TimeZone = ''{SERVER_TIME_ZONE}'''\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {work / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {POOL_SIZE}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
        "max_client_conn = 200\n"
        f"admin_users = {user}\n"
        "pidfile =\n"
    )


@pytest.fixture(scope="session")
def pgbouncer(pg_server_url: str) -> Iterator[PgBouncer]:
    exe = _executable()
    params = conninfo_to_dict(pg_server_url)
    user = str(params.get("user") or os.environ.get("USER") or "postgres")
    password = str(params.get("password") or "")
    with ExitStack() as stack:
        target = server_address(pg_server_url)
        if isinstance(target, str):
            # A unix socket (the embedded server): the user PgBouncer runs as may
            # not reach its directory. Through a TCP proxy of this process.
            proxy = stack.enter_context(tcp_proxy(pg_server_url))
            host, server_port = proxy.address
        else:
            host, server_port = target
        work = Path(tempfile.mkdtemp(prefix="tenantstore-pgbouncer-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        port = _free_port()
        secret = password.replace('"', '""')
        (work / "users.txt").write_text(f'"{user}" "{secret}"\n')
        (work / "pgbouncer.ini").write_text(
            _config(work, port, host, server_port, user)
        )
        command = [exe, str(work / "pgbouncer.ini")]
        run_as = _run_as()
        if run_as is not None:
            for path in (work, *work.iterdir()):
                shutil.chown(path, run_as)
            command[1:1] = ["-u", run_as]
        log = work / "pgbouncer.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        stack.callback(_stop, proc)
        bouncer = PgBouncer(port, log)
        probe = bouncer.url(pg_server_url)

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"pgbouncer exited: {log.read_text(errors='replace')}")
            try:
                with psycopg.connect(probe, autocommit=True, connect_timeout=2) as c:
                    c.execute("SELECT 1")
            except psycopg.OperationalError:
                return False
            return True

        wait_until(up, "pgbouncer accepts connections")
        yield bouncer


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # SIGTERM: PgBouncer's immediate shutdown
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
