"""The usage writer's bookkeeping without I/O, shared by `UsageWriter` and its twin.

`WriterQueue` holds what was submitted and not yet settled, in order, with the
counters `stats()` reports; `submit` is the same plain function in both twins (it
never waits, so it has no async form). The flushers in `_async/writer.py` and its
generated twin take batches from it, write them, and settle them here. The spool,
when there is one, is appended to under the same lock as the queue, so the log's
order is the queue's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ._clock import Clock, SystemClock
from ._models import RecordOutcome, UsageRecord
from ._rows import utc
from ._spool import Spool
from ._validation import usage_for_write
from .errors import InvalidInput, StoreUnavailable, TenantNotFound, TenantStoreError

__all__ = [
    "UsageWriterStats",
    "WriterQueue",
    "aexit_flush",
    "backoff",
    "exit_flush",
    "report_rejected",
]

_log = logging.getLogger("tenantstore.writer")

# The backlog is logged (WARNING) when pending records reach these percentages of
# max_pending, once per crossing: a mark is armed again only once the backlog
# fell under half of it, so a backlog hovering at a mark does not log each batch.
BACKLOG_MARKS: Final = (50, 90)

# Retry delays after a failed batch: exponential from BACKOFF_FIRST to BACKOFF_MAX
# seconds, each drawn uniformly from its upper half ("equal jitter"), so that
# gateway processes that lost the database together do not return in step.
BACKOFF_FIRST: Final = 0.05
BACKOFF_MAX: Final = 5.0

_UNKNOWN = RecordOutcome.UNKNOWN_TENANT
_DUPLICATE = RecordOutcome.DUPLICATE

OnRejected = Callable[[UsageRecord, TenantNotFound], object]
# Called with a record's outcome once its batch has committed (see `submit`).
OnDone = Callable[[RecordOutcome], object]


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...)."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(attempt - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class UsageWriterStats:
    """A usage writer's counters since it started.

    `submitted` = `written` + `duplicates` + `rejected` + `pending` at every
    instant. `submitted` includes records replayed from a spool. `retries` counts
    batches tried again after a failure (the database unreachable, a timeout).
    `spool_skipped` counts records of the spool that could not be read back when
    the writer started (torn by a crash mid-write, or corrupt): not replayed.
    """

    __module__ = "tenantstore"

    submitted: int
    written: int
    duplicates: int
    rejected: int
    pending: int
    batches: int
    retries: int
    spool_skipped: int = 0


class WriterQueue:
    """Submitted records in order, the batch being written, and the counters."""

    __slots__ = (
        "_append_log",
        "_backlog",
        "_done",
        "_limit",
        "_lock",
        "_marks",
        "_next_mark",
        "_now",
        "_queue",
        "_spool",
        "_wake",
        "batches",
        "closed",
        "duplicates",
        "in_flight",
        "max_batch",
        "max_pending",
        "oldest",
        "rejected",
        "retries",
        "submitted",
        "urgent",
        "wake_on_first",
        "written",
    )

    def __init__(
        self,
        *,
        max_batch: int,
        max_pending: int,
        clock: Clock,
        spool: Spool | None,
        wake: Callable[[], None],
        wake_on_first: bool = False,
    ) -> None:
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise InvalidInput("max_batch", "must be an int of at least 1")
        if not (isinstance(max_pending, int) and max_pending >= max_batch):
            raise InvalidInput("max_pending", "must be an int of at least max_batch")
        self.max_batch = max_batch
        self.max_pending = max_pending
        # The time `submit` stamps: the system clock's without the calls between.
        self._now: Callable[[], datetime] = (
            functools.partial(datetime.now, UTC)
            if type(clock) is SystemClock
            else lambda: utc(clock.now())
        )
        self._spool = spool
        self._append_log = None if spool is None else spool.append
        self._wake = wake
        self.wake_on_first = wake_on_first  # for a max_delay of 0: no idle ticks
        self._lock = threading.Lock()
        self._queue: deque[UsageRecord] = deque()
        # (position in submission order, callback) for records submitted with
        # `on_done`, oldest first: batches are taken and settled in that order.
        self._done: deque[tuple[int, OnDone]] = deque()
        self.in_flight = 0  # records taken and not yet settled
        self.oldest = 0.0  # monotonic time when the queue last became non-empty
        self.urgent = 0  # a flush wants everything submitted up to this count
        self.closed = False
        self.submitted = self.written = self.duplicates = self.rejected = 0
        self.batches = self.retries = 0
        self._marks = tuple(max(1, max_pending * p // 100) for p in BACKLOG_MARKS)
        self._backlog = 0  # how many marks the backlog is past
        self._next_mark = self._marks[0]
        self._set_limit()
        if spool is not None:
            self._queue.extend(spool.pending)
            self.submitted = len(self._queue)
            self.oldest = time.monotonic()

    def submit(self, record: UsageRecord, on_done: OnDone | None = None) -> None:
        # Validated and stamped here, in the caller: a bad record is the caller's
        # InvalidInput, and the timestamp is when the request ended, not when its
        # batch happens to be written.
        record = usage_for_write(record, self._now())
        # acquire/release rather than `with`: half the cost of the lock, here.
        lock = self._lock
        lock.acquire()
        try:
            queue = self._queue
            # One comparison for the closed writer, a full queue and a backlog
            # mark about to be crossed (see `_set_limit`); `_refuse` tells them
            # apart.
            marked = len(queue) + self.in_flight >= self._limit
            if marked:
                self._refuse()
            if self._append_log is not None:
                self._append_log(record)
            queue.append(record)
            if on_done is not None:
                self._done.append((self.submitted, on_done))
            self.submitted += 1
            pending = len(queue)
            if pending == 1:
                self.oldest = time.monotonic()
            crossed = self._cross() if marked else None
        finally:
            lock.release()
        if crossed is not None:
            _log.warning(
                "usage writer backlog: %d of max_pending %d records pending (%d%%)",
                crossed[0],
                self.max_pending,
                crossed[1],
            )
        # Wake the flusher only for a full batch (due at once): an idle flusher
        # looks every max_delay by itself, so a record is still written within
        # max_delay, and submit spares a thread switch (and, in the sync writer,
        # a hand-over of the GIL) that costs more than the rest of it.
        if pending == self.max_batch or (pending == 1 and self.wake_on_first):
            self._wake()

    def _set_limit(self) -> None:
        """Under the lock: the count pending at which `submit` must look closer,
        that is, refuse the record or log a crossed mark (0 once closed)."""
        self._limit = 0 if self.closed else min(self.max_pending, self._next_mark - 1)

    def _refuse(self) -> None:
        """Under the lock: raise when `submit` must not take a record."""
        if self.closed:
            raise TenantStoreError("the usage writer is closed")
        if len(self._queue) + self.in_flight >= self.max_pending:
            raise StoreUnavailable(
                f"the usage writer has {self.max_pending} records pending "
                "(max_pending): the database is not keeping up or unreachable"
            )

    def _cross(self) -> tuple[int, int] | None:
        """Under the lock, after a record was taken: (pending, its mark) when it
        crossed a backlog mark, else None."""
        pending = len(self._queue) + self.in_flight
        if pending < self._next_mark:
            return None
        self._backlog += 1
        mark = BACKLOG_MARKS[self._backlog - 1]
        marks = self._marks
        self._next_mark = (
            marks[self._backlog] if self._backlog < len(marks) else 1 << 62
        )
        self._set_limit()
        return pending, mark

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def pending(self) -> int:
        return len(self._queue) + self.in_flight

    def settled(self) -> int:
        """How many of the submitted records are written or rejected, in order."""
        return self.written + self.duplicates + self.rejected

    def due(self, now: float, max_delay: float) -> float:
        """0 when a batch should be written now, else seconds until one is due."""
        queued = len(self._queue)
        if not queued:
            return max_delay
        if (
            queued >= self.max_batch
            or self.closed
            or self.urgent > self.settled() + self.in_flight
        ):
            return 0.0
        return max(0.0, self.oldest + max_delay - now)

    def take(self) -> list[UsageRecord]:
        """The next batch, oldest first; it stays pending until `settle`."""
        with self._lock:
            queue = self._queue
            count = min(len(queue), self.max_batch)
            batch = [queue.popleft() for _ in range(count)]
            self.in_flight = count
            if queue:
                self.oldest = time.monotonic()
            return batch

    def settle(
        self, batch: list[UsageRecord], outcomes: list[RecordOutcome]
    ) -> list[UsageRecord]:
        """Count a written batch; return its records whose tenant is unknown."""
        rejected = [r for r, o in zip(batch, outcomes, strict=True) if o is _UNKNOWN]
        duplicates = sum(1 for o in outcomes if o is _DUPLICATE)
        if self._done:
            # Before the counters move: a flush that returns has seen them run.
            with self._lock:
                done = self._take_done(self.settled(), outcomes)
            for callback, outcome in done:
                try:
                    callback(outcome)
                except Exception:
                    _log.exception("usage writer: an on_done callback raised")
        with self._lock:
            self.rejected += len(rejected)
            self.duplicates += duplicates
            self.written += len(batch) - len(rejected) - duplicates
            self.batches += 1
            self.in_flight = 0
            if self._spool is not None:
                self._spool.acknowledge(len(batch))
            drained = self._backlog and self._rearm()
        if drained:
            _log.info("usage writer backlog drained: %d pending", len(self._queue))
        return rejected

    def _take_done(
        self, first: int, outcomes: list[RecordOutcome]
    ) -> list[tuple[OnDone, RecordOutcome]]:
        # Under the lock: the callbacks of the batch that starts at position
        # `first` (the records settled before it), with their outcomes.
        pending = self._done
        end = first + len(outcomes)
        done = []
        while pending and pending[0][0] < end:
            position, callback = pending.popleft()
            done.append((callback, outcomes[position - first]))
        return done

    def _rearm(self) -> bool:
        """Re-arm the marks the backlog fell well under; True when none is left
        crossed (under the lock)."""
        pending = len(self._queue)
        marks = self._marks
        while self._backlog and pending < marks[self._backlog - 1] // 2:
            self._backlog -= 1
            self._next_mark = marks[self._backlog]
        self._set_limit()
        return not self._backlog

    def stats(self) -> UsageWriterStats:
        with self._lock:
            return UsageWriterStats(
                submitted=self.submitted,
                written=self.written,
                duplicates=self.duplicates,
                rejected=self.rejected,
                pending=len(self._queue) + self.in_flight,
                batches=self.batches,
                retries=self.retries,
                spool_skipped=0 if self._spool is None else self._spool.skipped,
            )

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._set_limit()


def report_rejected(
    rejected: list[UsageRecord], on_rejected: OnRejected | None
) -> None:
    """Hand each record of an unknown tenant to `on_rejected` (or log them)."""
    if on_rejected is None:
        _log.warning(
            "usage writer: %d record(s) rejected: their tenant does not exist",
            len(rejected),
        )
        return
    for record in rejected:
        try:
            on_rejected(record, TenantNotFound("no such tenant"))
        except Exception:
            _log.exception("usage writer: on_rejected raised")


def exit_flush(core: Any, timeout: float) -> None:
    """The sync writer at interpreter exit: close within `timeout` seconds.

    Daemon threads still run while atexit handlers do (Python joins only the
    others before), so the flusher writes what is pending; whatever it cannot
    write in time is logged by `close` (ERROR, with the count).
    """
    with contextlib.suppress(TenantStoreError):  # logged by close
        core.close(timeout)


def aexit_flush(core: Any, timeout: float) -> None:
    """The asyncio writer at interpreter exit: its loop is gone, so no task can
    write any more; log what is pending (ERROR, with the count)."""
    core.report_pending("not closed before interpreter exit")
    core.closed = True
