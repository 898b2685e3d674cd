"""Paired primitives so one source serves both twins: the async name and its sync twin.

unasync maps each async name here to its sync partner (`AEvent` -> `Event`, ...), so the
generated `_sync/` modules import the sync side. Nothing here does I/O of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar, cast

__all__ = [
    "AEvent",
    "AFlight",
    "ALock",
    "AWorker",
    "Event",
    "Flight",
    "Lock",
    "Worker",
    "aevent_wait",
    "aspawn",
    "astop_worker",
    "event_wait",
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

    def wait(self) -> T:
        self._done.wait()
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

    async def wait(self) -> T:
        task = self._task
        assert task is not None, "wait() before lead()"
        self._waiters += 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiters -= 1
            if not self._waiters and not task.done():
                self._on_orphaned()
                task.cancel()
