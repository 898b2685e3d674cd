# Generated from _async/ by tools/gen_sync.py: do not edit by hand.
"""Cross-process invalidation: a listener LISTENs to the trigger on `tenants`.

The trigger of migrations/008 notifies channel ``tenantstore_tenants`` from inside
every transaction that changes `tenants` (delivered on commit, whoever the writer);
the listener applies each notification to its caches on a connection of its own,
proves at every heartbeat that notifications from another session still reach it
(`_Heartbeat`), revalidates what its caches hold with one query whenever it listens
again, and reconnects with backoff when it drops or misses a heartbeat. It keeps no
state of its own about tenants: what a notification means for a cache is
`_cachestate`'s business.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from types import TracebackType
from typing import Any, Final

import psycopg
from psycopg import Connection, pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .. import _sql
from .._acompat import Event, Worker, event_wait, spawn, stop_worker
from .._cachestate import CacheState, Revalidation
from .._listenerstate import ListenerStats
from .._models import Tenant
from .._notification import NOTHING, parse_notification
from .._pooler import SERVER_PID, behind_pooler, refused
from .._redact import redact_conninfo
from .._rows import tenant_from_row
from ..errors import InvalidInput
from .cache import CachedTenantRepository

__all__ = ["CHANNEL", "TenantCacheListener"]

CHANNEL: Final = "tenantstore_tenants"

_log = logging.getLogger("tenantstore.listener")

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

# Keepalives notice a peer that stops ACKing, not one that ACKs and says nothing
# (a frozen path behind a middlebox, a SIGSTOPped backend, a transaction-mode
# pooler that dropped the LISTEN): the heartbeat does. Every `interval` seconds a
# second connection NOTIFYs this listener's own channel, and the notification must
# come back within `deadline` seconds, else the listener is lost.
HEARTBEAT: Final = (1.0, 2.0)
PING_CHANNEL: Final = "tenantstore_ping_"
# LISTEN and the revalidation query wait on the socket with no deadline of their
# own (libpq's), so a path that freezes while they run would hang the listener,
# its caches suspended for good. Past this many heartbeat deadlines (10 s by
# default: room for a revalidation of every entry under load) the connection is
# shut down and the listener reconnects.
_STATEMENT_DEADLINES: Final = 5


class _ListenerLost(Exception):
    """The listener cannot vouch for its caches any more (internal: reconnect)."""


class _Heartbeat:
    """Pings sent from a second session to this listener's private channel.

    From a second session because that is the path a trigger's notification takes:
    another backend commits, the listening backend is signalled, reads the queue
    and writes to its client. A NOTIFY on the listener's own connection would prove
    the round trip through the queue to this session, but behind a
    transaction-mode pooler it can run on the very server connection that still
    holds the LISTEN and come back, while another session's notification reaches
    that server connection when it is idle or serving another client, and is lost.
    A private channel (a per-listener nonce) keeps the pings of N processes from
    waking each other: the trigger's channel is LISTENed in the same statement, by
    the same backend, so what reaches one reaches the other.

    The pinger's connection is driven through libpq's non-blocking calls and never
    waited on: a frozen path cannot hang the listener, it only misses the ping. No
    I/O blocks here, so both twins share this class as it is.
    """

    def __init__(
        self, pgconn: pq.abc.PGconn, channel: str, interval: float, deadline: float
    ) -> None:
        pgconn.nonblocking = 1
        self._pgconn = pgconn
        self.channel = channel
        self._channel = channel.encode()
        self._interval = interval
        self._deadline = deadline
        self._n = 0
        self._waiting_for: int | None = None  # the ping in flight
        self._sent_at = 0.0
        self._pending = False  # its statement's result not read yet
        self.proven = False
        """True once a ping came back (and so on, until one does not)."""

    def timeout(self, now: float) -> float:
        """Seconds until the next ping is due or the one in flight is overdue."""
        if self._waiting_for is not None:
            until = self._sent_at + self._deadline
        else:
            until = self._sent_at + self._interval
        return max(0.0, until - now)

    def tick(self, now: float) -> None:
        """Send the next ping when due; `_ListenerLost` when one is overdue."""
        self._drain()
        if self._waiting_for is not None:
            if now >= self._sent_at + self._deadline:
                raise _ListenerLost(
                    f"no heartbeat within {self._deadline:g} s: notifications "
                    "do not reach this listener"
                )
            return
        if now >= self._sent_at + self._interval:
            self._send(now)

    def received(self, payload: str) -> None:
        try:
            n = json.loads(payload).get("n")
        except (ValueError, AttributeError):
            return
        if n == self._waiting_for:
            self._waiting_for = None
            self.proven = True

    def _send(self, now: float) -> None:
        if self._pending:
            # The last ping came back but its statement never finished: this
            # connection is stuck, and would not send the next one.
            raise _ListenerLost("the heartbeat connection does not answer")
        self._n += 1
        payload = json.dumps({"op": "PING", "n": self._n}).encode()
        self._pgconn.send_query_params(_PING, [self._channel, payload])
        self._pgconn.flush()  # the rest, if any, at the next tick
        self._pending = True
        self._waiting_for = self._n
        self._sent_at = now

    def _drain(self) -> None:
        pgconn = self._pgconn
        if not self._pending:
            return
        pgconn.flush()
        pgconn.consume_input()
        while self._pending and not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                self._pending = False
            elif result.status != pq.ExecStatus.TUPLES_OK:
                message = (result.error_message or b"").decode(errors="replace")
                raise _ListenerLost(f"the heartbeat failed: {message.strip()}")
            elif result.ntuples == 0:
                raise _ListenerLost(
                    "the notify triggers of migration 008 are missing or disabled "
                    "on tenants (run `python -m tenantstore migrate up`)"
                )


_PING: Final = _sql.HEARTBEAT.encode()

# Every live listener of this process, for `_after_fork`.
_LIVE: Final[weakref.WeakSet[TenantCacheListener]] = weakref.WeakSet()


class TenantCacheListener:
    """Keeps caches in step with every committed change to `tenants`.

    Listens on `channel` (the trigger's) over its own autocommit connection to
    `conninfo`, and for each notification invalidates the changed tenant's id and
    old and new key hashes in every cache of `caches`; a TRUNCATE, or a payload it
    cannot read, drops everything (nothing of it may be served, not even stale).

    Heartbeat: every `heartbeat[0]` seconds a second connection of its own NOTIFYs
    a private channel this listener also LISTENs to, and the notification must
    arrive within `heartbeat[1]` seconds, or the listener is lost. That proves what
    a keepalive cannot: that another session's notification still reaches it (not
    behind a frozen path, a hung backend, a transaction-mode pooler, nor on a
    database without migration 008's triggers, where no ping is sent). So a change
    made elsewhere is seen within about `heartbeat[0] + heartbeat[1]` seconds (3 s
    by default) whatever fails, or as soon as its notification arrives.

    While it is not listening (before the first heartbeat came back, and from the
    moment a lost connection or a missed heartbeat is detected until then again)
    its caches serve nothing from memory as fresh: every entry is expired at once,
    lookups go to the database, and only `stale_if_error` may serve an entry while
    it is out of reach. Once it listens again it revalidates what its caches hold
    with one query on its own connection: entries whose tenant is unchanged and
    enabled are fresh again, the rest are dropped (LISTEN and that query are cut
    after five heartbeat deadlines, 10 s by default). It reconnects with exponential
    backoff (jittered, from `reconnect_backoff[0]` to `reconnect_backoff[1]`
    seconds). After `close()` the caches fall back to their TTL.

    In a process forked from the one that started it, the listener is inert
    (`connected` is False, `close()` does nothing) and its caches serve nothing as
    fresh until a listener started in that process is listening.

    `conninfo` must reach PostgreSQL directly: through a pooler (PgBouncer) the
    LISTEN would be left on whichever server connection ran it. A listener that
    finds one in the way stops, logs why and raises `InvalidInput` (naming
    ``conninfo``) from `wait_connected`; its caches serve nothing as fresh. Give it
    the database's direct URL while the repositories' pool goes through the
    pooler.

    `conninfo` gets TCP keepalives unless it sets them. Use it as a context
    manager, or call `start()` and `close()`.
    """

    __module__ = "tenantstore"

    def __init__(
        self,
        conninfo: str,
        caches: CachedTenantRepository | Sequence[CachedTenantRepository],
        *,
        channel: str = CHANNEL,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
        heartbeat: tuple[float, float] = HEARTBEAT,
    ) -> None:
        low, high = reconnect_backoff
        if not (0 < low <= high and math.isfinite(high)):
            raise InvalidInput(
                "reconnect_backoff", "must be (low, high), 0 < low <= high"
            )
        interval, deadline = heartbeat
        if not all(s > 0 and math.isfinite(s) for s in (interval, deadline)):
            raise InvalidInput(
                "heartbeat", "must be (interval, deadline), both finite and > 0"
            )
        if isinstance(caches, CachedTenantRepository):
            caches = (caches,)
        self.caches: tuple[CachedTenantRepository, ...] = tuple(caches)
        self.channel = channel
        self._states: tuple[CacheState[Any], ...] = tuple(
            cache._state for cache in self.caches
        )
        self._conninfo = make_conninfo(
            "", **{**_CONNECTION_DEFAULTS, **conninfo_to_dict(conninfo)}
        )
        self._where = redact_conninfo(self._conninfo)  # for logs: no password
        self._ping_channel = PING_CHANNEL + secrets.token_hex(8)
        # One statement, one backend: both LISTENs or neither.
        self._listen = sql.SQL("LISTEN {}; LISTEN {}").format(
            sql.Identifier(channel), sql.Identifier(self._ping_channel)
        )
        self._backoff = (float(low), float(high))
        self._heartbeat = (float(interval), float(deadline))
        self._statement_deadline = _STATEMENT_DEADLINES * float(deadline)
        self._stop = Event()
        self._connected = Event()
        # Guards `_conn` against `close()` waking it from another thread.
        self._conn_lock = threading.Lock()
        self._conn: Connection[Any] | None = None
        self._worker: Worker | None = None
        self._closing = False
        self._forked = False
        self._sessions = 0
        self._refusal: InvalidInput | None = None  # set: stopped for good
        # When it stopped listening (None: listening, or never was), and whether
        # that loss was logged: one WARNING per loss, not one per failed attempt.
        self._lost_at: float | None = None
        self._loss_logged = False
        self.backend_pid: int | None = None
        """The server process id of the listening connection (None when down)."""
        self.reconnects = 0
        """How many times LISTEN was re-established after a lost connection."""
        self.notifications = 0
        """How many notifications were applied."""
        self.heartbeats = 0
        """How many heartbeats came back."""
        self.heartbeats_missed = 0
        """How many times the listener was lost for want of a heartbeat."""
        self.revalidations = 0
        """How many revalidation queries it ran (one each time it listens again)."""
        self.revalidation_dropped = 0
        """How many entries revalidation dropped (changed, disabled or gone)."""
        _LIVE.add(self)

    @property
    def connected(self) -> bool:
        """True while it listens and its heartbeat comes back (its caches may
        serve fresh entries)."""
        return not self._forked and self._refusal is None and self._connected.is_set()

    def stats(self) -> ListenerStats:
        """A snapshot of its state and counters (see `ListenerStats`)."""
        return ListenerStats(
            connected=self.connected,
            reconnects=self.reconnects,
            notifications=self.notifications,
            heartbeats=self.heartbeats,
            heartbeats_missed=self.heartbeats_missed,
            revalidations=self.revalidations,
            revalidation_dropped=self.revalidation_dropped,
        )

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the listener is listening; False if `timeout` passed first.

        Raises `InvalidInput` when the listener refused its `conninfo` (a pooler
        stands between it and the server) and stopped.
        """
        connected = event_wait(self._connected, timeout)
        if self._refusal is not None:
            raise self._refusal
        return connected

    def start(self) -> None:
        """Start listening in the background; returns at once (`wait_connected`).

        From now until LISTEN succeeds its caches serve nothing as fresh.
        """
        if self._forked:
            raise RuntimeError(
                "this listener was started by the parent process: start a new one"
            )
        if self._worker is not None or self._closing:
            raise RuntimeError("a listener can be started once")
        for state in self._states:
            state.attach()
        self._worker = spawn(self._run, name=f"tenantstore-listener-{self.channel}")

    def close(self) -> None:
        """Stop listening and close the connection; the caches fall back to TTLs."""
        worker = self._worker
        if worker is None or self._closing or self._forked:
            # In a forked child the connection is the parent's: never touch it.
            self._closing = True
            return
        self._closing = True
        self._stop.set()
        self._wake()
        stop_worker(worker)
        # The worker left its caches suspended (not listening): release them.
        for state in self._states:
            state.detach()

    def __enter__(self) -> TenantCacheListener:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        low, high = self._backoff
        delay = low
        while not self._stop.is_set():
            sessions = self._sessions
            try:
                self._session()
            except InvalidInput as exc:
                # Through a pooler: trying again cannot help. `_connected` set
                # wakes `wait_connected`, which raises it (`connected` stays
                # False, and the caches suspended).
                _log.error("tenant cache listener stopped: %s", exc)
                self._refusal = exc
                self._connected.set()
                break
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    self._log_loss("connection failed or lost (%s)", type(exc).__name__)
            except _ListenerLost as exc:
                self.heartbeats_missed += 1
                self._log_loss("%s", exc)
            except Exception:
                # A bug, not an outage: log it and carry on listening.
                _log.exception("tenant cache listener: unexpected error")
            if self._stop.is_set():
                break
            if self._sessions != sessions:
                delay = low  # it was listening: retry quickly first
            event_wait(self._stop, random.uniform(delay / 2, delay))
            delay = min(delay * 2, high)

    def _log_loss(self, what: str, *args: object) -> None:
        # The first failure of an outage is a WARNING; the attempts that fail
        # after it, until the listener listens again, are DEBUG.
        level = logging.DEBUG if self._loss_logged else logging.WARNING
        self._loss_logged = True
        _log.log(
            level,
            "tenant cache listener lost (%s): " + what + "; caches expired, "
            "reconnecting",
            self._where,
            *args,
        )

    def _session(self) -> None:
        conn = Connection.connect(self._conninfo, autocommit=True)
        pinger: Connection[Any] | None = None
        listening = False
        try:
            with self._conn_lock:
                self._conn = conn
            if self._stop.is_set():
                return
            with self._watchdog():
                cur = conn.execute(SERVER_PID)
                row = cur.fetchone()
            if row is not None and behind_pooler(conn.info.backend_pid, row[0]):
                raise refused(
                    "the listener",
                    "holds LISTEN in one session",
                    "the listener (`listen_url=` beside a pooled URL)",
                )
            pinger = Connection.connect(self._conninfo, autocommit=True)
            with self._watchdog():
                conn.execute(self._listen)
            beat = _Heartbeat(pinger.pgconn, self._ping_channel, *self._heartbeat)
            now = time.monotonic
            beat.tick(now())
            while not self._stop.is_set():
                # One batch at a time (stop_after: the generator returns after
                # the batch, and so loses none of it), so that a ping is acted on
                # when it arrives, not when the wait times out.
                with closing(
                    conn.notifies(timeout=beat.timeout(now()), stop_after=1)
                ) as notifies:
                    for notify in notifies:
                        if notify.channel == beat.channel:
                            beat.received(notify.payload)
                            self.heartbeats += 1
                        else:
                            self._apply(notify.payload)
                if beat.proven and not listening:
                    # The first ping came back: another session's notifications
                    # reach this one. Confirm what is cached, then serve it.
                    self._revalidate(conn)
                    listening = True
                beat.tick(now())
        finally:
            if listening:
                self._down()
            with self._conn_lock:
                self._conn = None
            if pinger is not None:
                pinger.close()
            conn.close()

    def _revalidate(self, conn: Connection[Any]) -> None:
        """One query for every entry of every cache, then `_up`.

        Notifications that arrive while it runs are applied after it (psycopg
        keeps them for the next `notifies()`), so an entry changed meanwhile is
        dropped by its notification even if the query saw it unchanged; one
        invalidated before the snapshot is not in it, one invalidated after is
        no longer the snapshotted object: neither comes back.
        """
        revalidations = [state.revalidation() for state in self._states]
        hashes = sorted({key for r in revalidations for key in r.keys})
        rows: dict[str, Tenant] = {}
        if hashes:
            with self._watchdog():
                cur = conn.execute(_sql.SELECT_BY_HASHES, {"hashes": hashes})
                found = cur.fetchall()
            for row in found:
                tenant = tenant_from_row(row)
                rows[tenant.api_key_hash] = tenant
                if tenant.previous_api_key_hash is not None:
                    rows[tenant.previous_api_key_hash] = tenant
        self.revalidations += 1
        self._up(conn.info.backend_pid, revalidations, rows)

    def _up(
        self,
        backend_pid: int,
        revalidations: Sequence[Revalidation],
        rows: dict[str, Tenant],
    ) -> None:
        self.backend_pid = backend_pid
        self._sessions += 1
        if self._sessions > 1:
            self.reconnects += 1
        if self._lost_at is not None:
            _log.info(
                "tenant cache listener listening again (%s) after %.1f s down "
                "(reconnect %d)",
                self._where,
                time.monotonic() - self._lost_at,
                self.reconnects,
            )
        self._lost_at = None
        self._loss_logged = False
        for state, revalidation in zip(self._states, revalidations, strict=True):
            self.revalidation_dropped += state.resume(revalidation, rows)
        self._connected.set()

    def _down(self) -> None:
        # Changes from now on go unnoticed: nothing may be served as fresh.
        for state in self._states:
            state.suspend()
        self._connected.clear()
        self.backend_pid = None
        self._lost_at = time.monotonic()

    def _apply(self, payload: str) -> None:
        change = parse_notification(payload)
        if change is NOTHING:
            return
        for state in self._states:
            if change is None:
                # Everything is gone (TRUNCATE), or we cannot tell what is: a
                # notification that says so must not leave anything to serve.
                state.clear()
            else:
                state.invalidate(*change)
        self.notifications += 1

    @contextmanager
    def _watchdog(self) -> Iterator[None]:
        """Shut the connection down (`_wake`) if the statement run inside is not
        done within the statement deadline: it then fails, and the listener
        reconnects. A timer thread, so that it works alike for both twins."""
        timer = threading.Timer(self._statement_deadline, self._wake)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

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


def _after_fork() -> None:
    # In a forked child: the worker, its connections and its locks are the
    # parent's. Forget them without touching them (closing a shared socket would
    # end the parent's session); the caches' states suspend themselves.
    for listener in list(_LIVE):
        listener._forked = True
        listener._conn = None
        listener._conn_lock = threading.Lock()
        listener.backend_pid = None


os.register_at_fork(after_in_child=_after_fork)
