# Generated from _async/ by tools/gen_sync.py: do not edit by hand.
"""The usage writer: `submit` returns at once, a background flusher writes batches.

The asyncio writer (its flusher a task on the running loop) is edited in
`_async/writer.py`; the sync one (a daemon thread) is generated from it. The
queue, counters and `submit` are `_writerstate`'s, without I/O; the optional spool
is `_spool`'s. What lives here is the flusher: batches by size and delay, written
with `record_many`, kept and retried in order with jittered backoff while the
database is unavailable, never dropped; and flush, close, and what happens at
interpreter exit or when a writer is collected with records pending.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from types import TracebackType
from typing import Final

from .._acompat import Event, event_wait, spawn
from .._clock import SYSTEM_CLOCK, Clock
from .._models import UsageRecord
from .._spool import FSYNC_INTERVAL, Spool
from .._writerstate import (
    OnDone,
    OnRejected,
    UsageWriterStats,
    WriterQueue,
    backoff,
    exit_flush,
    report_rejected,
)
from ..errors import InvalidInput, StoreUnavailable
from .protocols import UsageRepository

__all__ = ["UsageWriter"]

_log = logging.getLogger("tenantstore.writer")

# How long a close whose flush failed waits for a write in progress to return.
_ABORT_GRACE: Final = 1.0
# Failures logged as warnings: the first, then one in this many.
_LOG_EVERY: Final = 20


class _WriterCore:
    """Everything a writer does, without a reference to the writer itself.

    The flusher runs this object's `run`, so a writer nobody holds any more can be
    collected (and report what it leaves pending) while its flusher still runs.
    """

    def __init__(
        self,
        usage: UsageRepository,
        queue: WriterQueue,
        spool: Spool | None,
        max_delay: float,
        on_rejected: OnRejected | None,
        wake: Event,
    ) -> None:
        # Records in the queue passed `usage_for_write` in `submit` (or in the
        # spool's replay): our repositories take them without validating again.
        self.record_many = getattr(usage, "_record_many_validated", usage.record_many)
        self.queue = queue
        self.spool = spool
        self.max_delay = max_delay
        self.on_rejected = on_rejected
        self.wake = wake  # set by `submit` when a batch is due
        self.progress = Event()
        self.finished = Event()
        self.interrupt = Event()  # cuts a backoff short when giving up
        self.abort = False  # give up on what is pending (a close that timed out)
        self.closed = False
        # When the batch being written first failed (monotonic); None while
        # writes succeed. What `Store.health()` calls an outage.
        self.failing_since: float | None = None

    def run(self) -> None:
        queue = self.queue
        try:
            while True:
                # Cleared before the state is read: a wake-up that comes after
                # the read leaves the event set, and the wait returns at once.
                self.wake.clear()
                if self.abort:
                    break
                if not queue.queued:
                    if queue.closed:
                        break
                    # Idle: look again within max_delay (submit does not wake
                    # us for a first record, see WriterQueue.submit).
                    event_wait(self.wake, self.max_delay or None)
                    continue
                due = queue.due(time.monotonic(), self.max_delay)
                if due > 0:
                    event_wait(self.wake, due)
                    continue
                self.write(queue.take())
        finally:
            self.finished.set()
            self.signal_progress()

    def write(self, batch: list[UsageRecord]) -> None:
        """Write `batch` until it is in, retrying with backoff; never drop it."""
        attempt = 0
        while True:
            try:
                outcomes = self.record_many(batch)
            except Exception as exc:
                attempt += 1
                self.queue.retries += 1
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                if attempt % _LOG_EVERY == 1:
                    _log.warning(
                        "usage writer: a batch of %d record(s) failed (%s), "
                        "retrying (attempt %d, %d pending)",
                        len(batch),
                        type(exc).__name__,
                        attempt,
                        self.queue.pending,
                    )
                if self.aborted():
                    return
                event_wait(self.interrupt, backoff(attempt))
                if self.aborted():  # `close` gave up while we waited
                    return
                continue
            self.failing_since = None
            rejected = self.queue.settle(batch, outcomes)
            if rejected:
                report_rejected(rejected, self.on_rejected)
            self.signal_progress()
            return

    def aborted(self) -> bool:
        return self.abort

    def signal_progress(self) -> None:
        # A new event per step, set once: every waiter that read the old one
        # wakes, and none can clear it under another (see `flush`).
        old = self.progress
        self.progress = Event()
        old.set()

    def flush(self, timeout: float | None) -> None:
        queue = self.queue
        target = queue.submitted
        if queue.settled() >= target:
            return
        queue.urgent = max(queue.urgent, target)
        self.wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = self.progress  # read before the state: see signal_progress
            if queue.settled() >= target:
                return
            if self.finished.is_set():
                raise StoreUnavailable(
                    f"the usage writer stopped with {queue.pending} record(s) pending"
                )
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailable(
                        f"flush timed out with {queue.pending} record(s) pending"
                    )
            event_wait(progress, remaining)

    def close(self, timeout: float | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue.close()  # no more submits; the flusher drains what is queued
        failure = None
        try:
            self.flush(timeout)
        except StoreUnavailable as exc:
            failure = exc
            self.abort = True
            self.interrupt.set()
        self.wake.set()
        event_wait(self.finished, None if failure is None else _ABORT_GRACE)
        pending = self.queue.pending
        if self.spool is not None:
            self.spool.close()
        if pending:
            self.report_pending("closed")
            raise StoreUnavailable(
                f"the usage writer closed with {pending} record(s) not written"
            ) from failure

    def report_pending(self, how: str, where: str | None = None) -> None:
        pending = self.queue.pending
        if not pending:
            return
        if where is None:
            where = (
                f"kept in the spool {self.spool.directory} for the next writer"
                if self.spool is not None
                else "lost"
            )
        _log.error(
            "usage writer %s with %d record(s) not written (%s)", how, pending, where
        )

    def abandoned(self) -> None:
        """The writer was collected (or the interpreter exits) without `close`."""
        if self.closed:
            return
        self.report_pending(
            "collected before close",
            "its flusher goes on writing them until interpreter exit",
        )
        self.queue.close()
        self.wake.set()

    def at_exit(self, timeout: float) -> None:
        """At interpreter exit: the sync writer flushes for up to `timeout`
        seconds, then stops; an asyncio writer's task cannot run any more (the
        loop is gone), so it says what is left."""
        if not self.closed:
            exit_flush(self, timeout)


class UsageWriter:
    """Records usage without a round trip on the request path.

    `submit(record)` validates and stamps the record (InvalidInput to the caller),
    queues it and returns in microseconds; it never blocks: with `max_pending`
    records pending it raises `StoreUnavailable`. A background task writes batches
    of up to `max_batch` records with `usage.record_many`, at most `max_delay`
    seconds after the oldest pending record; while the database is unavailable a
    batch is kept, in order, and retried with jittered backoff. Records whose
    tenant does not exist go to `on_rejected(record, TenantNotFound)` (else they
    are logged) and are counted; the rest of their batch is written.

    With `spool=DIRECTORY` each record is appended to a local log before `submit`
    returns, fsynced every `fsync_interval` seconds, and a writer started on that
    directory writes first what an earlier process left there (a second live
    writer on it is refused): a crash, even SIGKILL, loses no submitted record.

    Close it (or use it as a context manager) when the application stops. The
    sync writer also flushes at interpreter exit (atexit, for up to
    `exit_timeout` seconds), so a process that exits normally or by
    `sys.exit` from a SIGTERM handler loses nothing. The asyncio writer is built
    on the running loop (its task starts at once) and must be closed before that
    loop ends; its `submit` is for the loop's own thread. A writer collected,
    closed or left at exit with records pending logs an ERROR with their count.
    """

    __module__ = "tenantstore"

    def __init__(
        self,
        usage: UsageRepository,
        *,
        max_batch: int = 1000,
        max_delay: float = 0.05,
        max_pending: int = 100_000,
        spool: str | os.PathLike[str] | None = None,
        on_rejected: OnRejected | None = None,
        fsync_interval: float = FSYNC_INTERVAL,
        exit_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not (isinstance(max_delay, int | float) and max_delay >= 0):
            raise InvalidInput("max_delay", "must be a number of seconds >= 0")
        wake = Event()
        log = Spool(spool, fsync_interval) if spool is not None else None
        try:
            queue = WriterQueue(
                max_batch=max_batch,
                max_pending=max_pending,
                clock=clock or SYSTEM_CLOCK,
                spool=log,
                wake=wake.set,
                wake_on_first=not max_delay,
            )
        except BaseException:
            if log is not None:
                log.close()
            raise
        self._queue = queue
        self._core = core = _WriterCore(
            usage, queue, log, float(max_delay), on_rejected, wake
        )
        self._worker = spawn(core.run, "tenantstore-usage-writer")
        # Neither hook holds the writer: it can still be collected.
        self._finalizer = weakref.finalize(self, core.abandoned)
        atexit.register(core.at_exit, exit_timeout)

    def submit(self, record: UsageRecord, on_done: OnDone | None = None) -> None:
        """Queue `record` for writing; see the class docstring.

        `on_done(outcome)`, if given, is called with the record's
        `RecordOutcome` once its batch has committed (INSERTED, DUPLICATE or
        UNKNOWN_TENANT), in the flusher's thread (task), before the record
        counts as settled (a `flush` that returns has called it); never for a
        record left unwritten when the writer closes. An exception it raises is
        logged.
        """
        self._queue.submit(record, on_done)

    def flush(self, timeout: float | None = None) -> None:
        """Return once every record submitted before the call is written or
        rejected; `StoreUnavailable` if `timeout` seconds pass first."""
        self._core.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop. If `timeout` passes first, the records still pending
        are logged (ERROR, with their count) and `StoreUnavailable` is raised;
        with a spool they stay in it for the next writer."""
        core = self._core
        atexit.unregister(core.at_exit)
        self._finalizer.detach()
        core.close(timeout)

    def stats(self) -> UsageWriterStats:
        """The counters: submitted = written + duplicates + rejected + pending."""
        return self._queue.stats()

    def __enter__(self) -> UsageWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
