"""Paired primitives so one source serves both twins: the async name and its sync twin.

unasync maps each async name here to its sync partner (`AEvent` -> `Event`, ...), so the
generated `_sync/` modules import the sync side. Nothing here does I/O of its own,
except that a watchdog whose deadline passes shuts a connection's socket down.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
from collections.abc import Callable, Coroutine, Generator
from contextlib import AbstractAsyncContextManager
from time import monotonic
from types import TracebackType
from typing import Annotated, Any, Final, Generic, TypeVar, cast

import psycopg

from .errors import StoreUnavailable

__all__ = [
    "AEvent",
    "AFlight",
    "ALock",
    "AOpening",
    "AWatchdog",
    "AWorker",
    "Event",
    "Flight",
    "Lock",
    "Opening",
    "Watchdog",
    "Worker",
    "aevent_wait",
    "aoffload",
    "aopening",
    "aspawn",
    "astop_worker",
    "event_wait",
    "offload",
    "opening",
    "spawn",
    "stop_worker",
]

T = TypeVar("T")

Lock = threading.Lock
ALock = asyncio.Lock
Event = threading.Event
AEvent = asyncio.Event
Worker = threading.Thread
AWorker = asyncio.Task[None]


def spawn(target: Callable[[], None], name: str) -> threading.Thread:
    """Run `target` on a daemon thread."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def aspawn(
    target: Callable[[], Coroutine[Any, Any, None]], name: str
) -> asyncio.Task[None]:
    """Run `target()` as a task on the running loop."""
    return asyncio.get_running_loop().create_task(target(), name=name)


def stop_worker(worker: threading.Thread) -> None:
    """Wait for a worker thread told to stop (threads cannot be interrupted)."""
    worker.join()


async def astop_worker(worker: asyncio.Task[None]) -> None:
    """Cancel a worker task and wait until it has finished."""
    worker.cancel()
    # wait() rather than `await worker`: the worker's CancelledError is not ours,
    # and a cancellation of the caller must not be swallowed with it.
    await asyncio.wait({worker})


def event_wait(event: threading.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` passes; True if it is set."""
    return event.wait(timeout)


async def aevent_wait(event: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109  (the twin of Event.wait(timeout))
    """Wait until `event` is set or `timeout` passes; True if it is set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def offload(call: Callable[..., T], *args: Any) -> T:
    """Run a CPU-bound call (a bcrypt hash) in the calling thread."""
    return call(*args)


async def aoffload(call: Callable[..., T], *args: Any) -> T:
    """Run a CPU-bound call (a bcrypt hash) on a worker thread: the event loop
    keeps serving while it runs (bcrypt releases the GIL)."""
    return await asyncio.to_thread(call, *args)


# -- opening: `Store.open(...)` / `await AsyncStore.open(...)` ---------------------
#
# The sync `open` returns the opened object itself (a context manager already);
# the async one must be awaited, or entered: `async with AsyncStore.open(url)`.

Opened = TypeVar("Opened", bound=AbstractAsyncContextManager[Any])

Opening = Annotated[T, "opened"]
"""The sync twin of `AOpening[T]`: `T` itself."""


def opening(opened: T) -> T:
    """The sync twin of `aopening`: what was opened, as it is."""
    return opened


class AOpening(Generic[Opened]):
    """An opening in progress: `await` it for the opened object, or use it as an
    async context manager (`async with X.open(...) as x`: closed on exit)."""

    __slots__ = ("_coro", "_opened")

    def __init__(self, coro: Coroutine[Any, Any, Opened]) -> None:
        self._coro = coro
        self._opened: Opened | None = None

    def __await__(self) -> Generator[Any, None, Opened]:
        return self._coro.__await__()

    async def __aenter__(self) -> Opened:
        self._opened = opened = await self._coro
        entered: Opened = await opened.__aenter__()
        return entered

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.__aexit__(exc_type, exc, tb)


def aopening(coro: Coroutine[Any, Any, Opened]) -> AOpening[Opened]:
    """`coro` (which opens something) as an `AOpening`: awaitable or enterable."""
    return AOpening(coro)


_NO_OUTCOME: Final = (
    "the lookup this call joined did not finish in time (the store is slow or "
    "out of reach)"
)


class Flight(Generic[T]):
    """One call whose outcome several threads share (single flight).

    The thread that created it runs the call with `lead()`; the others block in
    `wait()` and get its result or its exception. Threads cannot be cancelled, so
    the call always completes and `on_orphaned` is never needed.
    """

    __slots__ = ("_call", "_done", "_error", "_result")

    def __init__(self, call: Callable[[], T], on_orphaned: Callable[[], None]) -> None:
        self._call = call
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def lead(self) -> T:
        try:
            self._result = result = self._call()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._done.set()
        return result

    def wait(self, timeout: float | None = None) -> T:
        """The leader's outcome; `StoreUnavailable` if none within `timeout`."""
        if not self._done.wait(timeout):
            raise StoreUnavailable(_NO_OUTCOME)
        if self._error is not None:
            raise self._error
        return cast(T, self._result)


class AFlight(Generic[T]):
    """One call whose outcome several tasks share (single flight).

    `lead()` runs the call as a task of its own, so cancelling the caller that
    started it does not cancel it for the others; every caller awaits it shielded.
    When the last caller is cancelled, `on_orphaned()` runs (so that no newcomer
    joins a doomed call) and the call is cancelled: nobody is left to use it.
    """

    __slots__ = ("_call", "_on_orphaned", "_task", "_waiters")

    def __init__(
        self,
        call: Callable[[], Coroutine[Any, Any, T]],
        on_orphaned: Callable[[], None],
    ) -> None:
        self._call = call
        self._on_orphaned = on_orphaned
        self._task: asyncio.Task[T] | None = None
        self._waiters = 0

    async def lead(self) -> T:
        # No await before create_task: whoever joins next finds the task.
        self._task = asyncio.get_running_loop().create_task(self._call())
        return await self.wait()

    async def wait(self, timeout: float | None = None) -> T:  # noqa: ASYNC109  (as Event.wait)
        """The call's outcome; `StoreUnavailable` if none within `timeout` (the
        call goes on for whoever else waits)."""
        task = self._task
        assert task is not None, "wait() before lead()"
        self._waiters += 1
        try:
            if timeout is None:
                return await asyncio.shield(task)
            try:
                return await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                raise StoreUnavailable(_NO_OUTCOME) from None
        finally:
            self._waiters -= 1
            if not self._waiters and not task.done():
                self._on_orphaned()
                task.cancel()


# -- call deadlines ----------------------------------------------------------------
#
# A connection whose path is dead (a frozen network, a SIGSTOPped backend) never
# fails by itself: the peer's kernel keeps ACKing, so keepalives and
# tcp_user_timeout see nothing, and psycopg's cancel request takes the same dead
# path. What always works is to shut the socket down: libpq fails at once and the
# connection is marked broken. Both watchdogs do that when a call's deadline
# passes; `disarm` says whether it did, so the caller discards the connection.

Conn = psycopg.BaseConnection[Any]


def shut_down(conn: Conn) -> None:
    """Shut `conn`'s socket down, both ways: whatever waits on it fails at once.

    Through a duplicate of the descriptor, so that libpq's own stays valid (and is
    closed by whoever closes the connection).
    """
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):
        pass  # already closed: nothing is waiting on it any more


# The longest the deadline thread sleeps. A deadline later than its next wake-up
# needs no signal (a signal per call would hand the GIL to the thread every time);
# one earlier than that (a timeout shorter than this) wakes it.
_IDLE: Final = 1.0
_ABSENT: Final = -1.0  # no deadline is negative: monotonic() + seconds


class _Deadlines:
    """The process's deadline thread and what it watches: connection -> deadline.

    Arming and disarming are one dict operation each, without a lock (atomic in
    CPython). The thread pops an overdue entry and shuts its socket down while
    holding `lock`; a caller whose pop finds nothing takes `lock` once, so it never
    closes (or reuses) a connection whose socket is being shut down.
    """

    def __init__(self) -> None:
        self.armed: dict[Conn, float] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.due = math.inf  # the thread's next wake-up; inf: any arm wakes it
        self.thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def kick(self) -> None:
        if self.thread is None:
            with self._start_lock:
                if self.thread is None:
                    self.thread = threading.Thread(
                        target=self._run, name="tenantstore-deadlines", daemon=True
                    )
                    self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        armed = self.armed
        while True:
            self.wake.clear()
            self.due = math.inf  # an arm during the scan may be missed: wake
            now = monotonic()
            due = now + _IDLE
            overdue = []
            for conn, deadline in list(armed.items()):
                if deadline <= now:
                    overdue.append(conn)
                elif deadline < due:
                    due = deadline
            if overdue:
                with self.lock:
                    for conn in overdue:
                        current = armed.pop(conn, _ABSENT)
                        if current == _ABSENT:
                            continue  # disarmed meanwhile: the call finished
                        if current > now:
                            armed[conn] = current  # re-armed by its next call
                            continue
                        shut_down(conn)
            self.due = due
            self.wake.wait(max(0.0, due - monotonic()))


_deadlines = _Deadlines()


def _after_fork() -> None:
    # The thread does not exist in a child, and what the parent armed is the
    # parent's: start afresh.
    global _deadlines
    _deadlines = _Deadlines()


os.register_at_fork(after_in_child=_after_fork)


class Watchdog:
    """Call deadlines for threads: `arm` before a call, `disarm` after it.

    One daemon thread per process serves every watchdog; no thread or timer is
    created per call.
    """

    __slots__ = ()

    def arm(self, conn: Conn, seconds: float) -> Conn:
        """Shut `conn` down unless disarmed within `seconds`; returns the token."""
        deadlines = _deadlines
        deadline = monotonic() + seconds
        deadlines.armed[conn] = deadline
        if deadline < deadlines.due:
            deadlines.kick()
        return conn

    def disarm(self, token: Conn) -> bool:
        """Stop watching; True if the deadline passed and the socket was shut down."""
        deadlines = _deadlines
        if deadlines.armed.pop(token, _ABSENT) != _ABSENT:
            return False
        with deadlines.lock:  # the thread took it: wait for it to be done with it
            return deadlines.armed.pop(token, _ABSENT) == _ABSENT


class _Alarm:
    __slots__ = ("conn", "fired", "handle")
    handle: asyncio.TimerHandle

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        shut_down(self.conn)


class AWatchdog:
    """Call deadlines for tasks: a `loop.call_later` timer per call (cheap), which
    runs on the loop's thread, so it cannot race with the call that owns `conn`."""

    __slots__ = ()

    def arm(self, conn: Conn, seconds: float) -> _Alarm:
        """Shut `conn` down unless disarmed within `seconds`; returns the token."""
        alarm = _Alarm(conn)
        alarm.handle = asyncio.get_running_loop().call_later(seconds, alarm.fire)
        return alarm

    def disarm(self, token: _Alarm) -> bool:
        """Stop watching; True if the deadline passed and the socket was shut down."""
        token.handle.cancel()
        return token.fired
