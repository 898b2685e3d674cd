"""Cross-process invalidation: a listener LISTENs to the trigger on `tenants`.

The trigger of migrations/003 notifies channel ``tenantstore_tenants`` from inside
every transaction that changes `tenants` (delivered on commit, whoever the writer);
the listener applies each notification to its caches on a connection of its own,
reconnecting with backoff when it drops. It keeps no state of its own about tenants:
what a notification means for a cache is `_cachestate`'s business.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
from collections.abc import Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._acompat import AEvent, AWorker, aevent_wait, aspawn, astop_worker
from .._cachestate import CacheState, parse_notification
from ..errors import InvalidInput
from .cache import AsyncCachedTenantRepository

__all__ = ["CHANNEL", "AsyncTenantCacheListener"]

CHANNEL: Final = "tenantstore_tenants"

_log = logging.getLogger("tenantstore")

# Applied unless the conninfo says otherwise. An idle LISTEN connection sends
# nothing, so without TCP keepalives a silent network failure (a dead host, a
# dropped NAT entry) would go unnoticed for hours, and with it every notification:
# these detect it within idle + interval * count = 11 s. (A closed or reset
# connection, such as a restarted or terminated backend, is noticed at once.)
_CONNECTION_DEFAULTS: Final = {
    "application_name": "tenantstore-listener",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
}

# Longest wait for notifications before the stop flag is checked again, in case a
# wake-up from `close()` is lost to a race with a reconnect.
_BACKSTOP: Final = 30.0


class AsyncTenantCacheListener:
    """Keeps caches in step with every committed change to `tenants`.

    Listens on `channel` (the trigger's) over its own autocommit connection to
    `conninfo`, and for each notification invalidates the changed tenant's id and
    old and new key hashes in every cache of `caches`; a TRUNCATE, or a payload it
    cannot read, expires everything.

    While it is not listening (before the first LISTEN, and from the moment a lost
    connection is detected until LISTEN succeeds again) its caches serve nothing
    from memory as fresh: every entry is expired at once, lookups go to the
    database (and only `stale_if_error` may serve an entry while that fails), and
    everything is expired once more after LISTEN succeeds, since what changed
    meanwhile is unknown. It reconnects with exponential backoff (jittered, from
    `reconnect_backoff[0]` to `reconnect_backoff[1]` seconds). After `close()` the
    caches fall back to their TTL.

    `conninfo` gets TCP keepalives unless it sets them: a silently dead connection
    is detected within about 11 seconds. Use it as a context manager, or call
    `start()` and `close()`.
    """

    __module__ = "tenantstore"

    def __init__(
        self,
        conninfo: str,
        caches: AsyncCachedTenantRepository | Sequence[AsyncCachedTenantRepository],
        *,
        channel: str = CHANNEL,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        low, high = reconnect_backoff
        if not (0 < low <= high and math.isfinite(high)):
            raise InvalidInput(
                "reconnect_backoff", "must be (low, high), 0 < low <= high"
            )
        if isinstance(caches, AsyncCachedTenantRepository):
            caches = (caches,)
        self.caches: tuple[AsyncCachedTenantRepository, ...] = tuple(caches)
        self.channel = channel
        self._states: tuple[CacheState[Any], ...] = tuple(
            cache._state for cache in self.caches
        )
        self._conninfo = make_conninfo(
            "", **{**_CONNECTION_DEFAULTS, **conninfo_to_dict(conninfo)}
        )
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
        self._backoff = (float(low), float(high))
        self._stop = AEvent()
        self._connected = AEvent()
        # Guards `_conn` against `close()` waking it from another thread.
        self._conn_lock = threading.Lock()
        self._conn: AsyncConnection[Any] | None = None
        self._worker: AWorker | None = None
        self._closing = False
        self._sessions = 0
        self.backend_pid: int | None = None
        """The server process id of the listening connection (None when down)."""
        self.reconnects = 0
        """How many times LISTEN was re-established after a lost connection."""
        self.notifications = 0
        """How many notifications were applied."""

    @property
    def connected(self) -> bool:
        """True while LISTEN is in effect (its caches may serve fresh entries)."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109  (as Event.wait)
        """Wait until the listener is listening; False if `timeout` passed first."""
        return await aevent_wait(self._connected, timeout)

    async def start(self) -> None:
        """Start listening in the background; returns at once (`wait_connected`).

        From now until LISTEN succeeds its caches serve nothing as fresh.
        """
        if self._worker is not None or self._closing:
            raise RuntimeError("a listener can be started once")
        for state in self._states:
            state.suspend()
        self._worker = aspawn(self._run, name=f"tenantstore-listener-{self.channel}")

    async def close(self) -> None:
        """Stop listening and close the connection; the caches fall back to TTLs."""
        worker = self._worker
        if worker is None or self._closing:
            self._closing = True
            return
        self._closing = True
        self._stop.set()
        self._wake()
        await astop_worker(worker)
        # The worker left its caches suspended (not listening): release them.
        for state in self._states:
            state.resume()

    async def __aenter__(self) -> AsyncTenantCacheListener:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self) -> None:
        low, high = self._backoff
        delay = low
        while not self._stop.is_set():
            sessions = self._sessions
            try:
                await self._session()
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    _log.warning(
                        "tenant cache listener: connection failed or lost (%s); "
                        "caches expired, reconnecting",
                        type(exc).__name__,
                    )
            except Exception:
                # A bug, not an outage: log it and carry on listening.
                _log.exception("tenant cache listener: unexpected error")
            if self._stop.is_set():
                break
            if self._sessions != sessions:
                delay = low  # it was listening: retry quickly first
            await aevent_wait(self._stop, random.uniform(delay / 2, delay))
            delay = min(delay * 2, high)

    async def _session(self) -> None:
        conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
        listening = False
        try:
            with self._conn_lock:
                self._conn = conn
            if self._stop.is_set():
                return
            await conn.execute(self._listen)
            self._up(conn.info.backend_pid)
            listening = True
            while not self._stop.is_set():
                async with aclosing(conn.notifies(timeout=_BACKSTOP)) as notifies:
                    async for notify in notifies:
                        self._apply(notify.payload)
        finally:
            if listening:
                self._down()
            with self._conn_lock:
                self._conn = None
            await conn.close()

    def _up(self, backend_pid: int) -> None:
        self.backend_pid = backend_pid
        self._sessions += 1
        if self._sessions > 1:
            self.reconnects += 1
        # Listening now: whatever changed before is unknown, so expire it all.
        for state in self._states:
            state.resume()
        self._connected.set()

    def _down(self) -> None:
        # Changes from now on go unnoticed: nothing may be served as fresh.
        for state in self._states:
            state.suspend()
        self._connected.clear()
        self.backend_pid = None

    def _apply(self, payload: str) -> None:
        change = parse_notification(payload)
        for state in self._states:
            if change is None:
                state.expire_all()
            else:
                state.invalidate(*change)
        self.notifications += 1

    def _wake(self) -> None:
        # Interrupt the worker's wait on its connection from another thread: shut
        # the socket down through a duplicate of its descriptor (libpq's own stays
        # valid, and is closed by the worker). Holding the lock keeps the worker
        # from closing the connection, and the descriptor from being reused, now.
        with self._conn_lock:
            conn = self._conn
            if conn is None or conn.closed:
                return
            try:
                with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg.Error):
                pass
