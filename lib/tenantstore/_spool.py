"""The usage writer's local append-only log: plain file I/O, shared by both twins.

A spool directory holds numbered segment files (``00000001.log``, ...) of a fixed
size, and a ``lock`` file. Each submitted record is one frame, its length and
checksum then its fields (`encode`), copied into the live segment through a shared
memory map before `submit` returns: from then on it is in the kernel's page cache and
survives the process, even SIGKILL, at the cost of a memory copy instead of a
system call. A zero length ends the log: a segment's unwritten tail is zeros (a
new file is sparse, and an emptied one is zeroed as far as it was written), so a
frame needs no end marker after it. A thread flushes the map to disk
(`msync`) every `fsync_interval` seconds when something was written (group commit,
as Redis's ``appendfsync everysec``): a power loss or kernel crash loses at most
that interval. Records are acknowledged in order as their batches commit; a
segment whose records are all acknowledged is deleted (or, when it is the live
one, emptied in place), so the spool holds only what is not yet in the database.
A writer started on the directory reads what is left there first, and since
(tenant_id, request_id) is idempotent, writing it again duplicates nothing. A
frame cut short by a crash (or one whose checksum fails) is skipped and counted.
`fcntl.flock` on the lock file keeps a second live writer out; the kernel releases
it when the holder dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
import threading
import zlib
from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

from ._models import UsageRecord
from ._validation import usage_for_write
from .errors import InvalidInput

__all__ = ["FSYNC_INTERVAL", "Spool", "decode", "encode"]

_log = logging.getLogger("tenantstore.writer")

FSYNC_INTERVAL: Final = 1.0
# Each segment file is this big (sparse until written); a full one is closed and
# the next begun, and deleted once all its records are acknowledged.
SEGMENT_BYTES: Final = 8 * 1024 * 1024

# A frame: payload length, Adler-32 of the payload, then the payload: the three
# integers, `cached`, the timestamp as the days, seconds and microseconds since
# 1970 UTC (exact, and a fraction of isoformat's cost: the fields of a timedelta,
# cheaper than its count of microseconds), then the six texts, UTF-8, each but
# the last followed by a NUL (which no valid text holds).
_FRAME: Final = struct.Struct("<II")
_HEAD: Final = struct.Struct("<IIIBiII")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_END: Final = bytes(_FRAME.size)  # a zero length: nothing follows
# Adler-32 rather than CRC-32: half the cost on the submit path (no tables to miss
# the cache on). A torn frame always fails it (its missing tail reads as zeros,
# and the payload's last byte is a digit of the cost); against random corruption
# it is weaker than CRC-32 on frames this short, and `decode` validates every
# field of what passes it, as `record_many` would.
_checksum = zlib.adler32
_pack_head = _HEAD.pack
_pack_frame = _FRAME.pack


def encode(record: UsageRecord) -> bytes:
    """The frame of a validated, timestamped record."""
    # On the submit path: written out flat (no tuples, map or join), and the texts
    # in one f-string encoded once; a third of the cost of packing each on its own.
    assert record.timestamp is not None
    since = record.timestamp - _EPOCH
    payload = (
        _pack_head(
            record.input_tokens,
            record.output_tokens,
            record.latency_ms,
            record.cached,
            since.days,
            since.seconds,
            since.microseconds,
        )
        + f"{record.tenant_id}\0{record.request_id}\0{record.model}\0"
        f"{record.provider}\0{record.status}\0{record.cost_usd!s}".encode()
    )
    return _pack_frame(len(payload), _checksum(payload)) + payload


def decode(payload: bytes) -> UsageRecord | None:
    """The record of a whole frame's payload, or None when it is not one."""
    try:
        head = _HEAD.unpack_from(payload)
        texts = payload[_HEAD.size :].decode().split("\0")
        if len(texts) != 6:
            return None
        tenant_id, request_id, model, provider, status, cost = texts
        return usage_for_write(
            UsageRecord(
                tenant_id=tenant_id,
                request_id=request_id,
                model=model,
                provider=provider,
                input_tokens=head[0],
                output_tokens=head[1],
                cost_usd=Decimal(cost),
                cached=bool(head[3]),
                latency_ms=head[2],
                status=status,
                timestamp=_EPOCH + timedelta(head[4], head[5], head[6]),
            )
        )
    except (ValueError, struct.error, ArithmeticError, OverflowError):
        return None


class _Segment:
    __slots__ = ("acknowledged", "path", "records")

    def __init__(self, path: Path, records: int) -> None:
        self.path = path
        self.records = records
        self.acknowledged = 0


class Spool:
    """One writer's log in `directory` (created if missing).

    Raises `InvalidInput("spool", ...)` when another live writer holds the
    directory. `pending` is what earlier writers left, oldest first; `skipped`
    counts the torn or corrupt frames passed over to get it.
    """

    __slots__ = (
        "_appended",
        "_fd",
        "_flusher",
        "_live_since",
        "_lock_fd",
        "_map",
        "_segments",
        "_stop",
        "_synced",
        "_write",
        "closed",
        "directory",
        "fsync_interval",
        "pending",
        "skipped",
    )

    def __init__(
        self, directory: str | os.PathLike[str], fsync_interval: float = FSYNC_INTERVAL
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise InvalidInput(
                "spool", "is in use by another live usage writer"
            ) from None
        self.fsync_interval = fsync_interval
        self.closed = False
        # Oldest first; the last is the live one, being appended to.
        self._segments: deque[_Segment] = deque()
        self.pending: list[UsageRecord] = []
        self.skipped = 0
        last = 0
        for path in sorted(self.directory.glob("*.log")):
            last = max(last, int(path.stem))
            records = self._read(path)
            if records:
                self.pending.extend(records)
                self._segments.append(_Segment(path, len(records)))
            else:
                path.unlink()
        if self.skipped:
            _log.warning(
                "usage writer spool: skipped %d torn or corrupt record(s) in %s",
                self.skipped,
                self.directory,
            )
        # Records appended, ever: the live segment holds those since _live_since,
        # and those up to _synced are flushed (or being flushed).
        self._appended = self._live_since = self._synced = 0
        self._open(last + 1)
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._fsync_loop, name="tenantstore-spool-fsync", daemon=True
        )
        self._flusher.start()

    def _read(self, path: Path) -> list[UsageRecord]:
        data = path.read_bytes()
        records = []
        at = 0
        while at + _FRAME.size <= len(data):
            length, checksum = _FRAME.unpack_from(data, at)
            if length == 0:
                break  # the end of the log
            payload = data[at + _FRAME.size : at + _FRAME.size + length]
            at += _FRAME.size + length
            record = None
            if len(payload) == length and _checksum(payload) == checksum:
                record = decode(payload)
            if record is None:
                self.skipped += 1
                if len(payload) < length:
                    break  # cut short: nothing can follow
                continue
            records.append(record)
        return records

    def _open(self, number: int) -> None:
        path = self.directory / f"{number:08d}.log"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, SEGMENT_BYTES)
        self._map = mmap.mmap(self._fd, SEGMENT_BYTES)
        # Writes at the map's own position and moves it on; ValueError, writing
        # nothing, when the frame does not fit.
        self._write = self._map.write
        self._live_since = self._appended
        self._segments.append(_Segment(path, 0))
        # The new file's name must survive a crash too.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def append(self, record: UsageRecord) -> None:
        """Log `record` (the caller holds the writer's lock: order is kept)."""
        # One copy into the map and a counter: the segment's tail is zeros already
        # (see the module docstring), and the live segment's count of records is
        # derived from `_appended` when needed.
        frame = encode(record)
        try:
            self._write(frame)
        except ValueError:  # the segment is full
            self._roll()
            self._write(frame)
        self._appended += 1

    def _roll(self) -> None:
        if self._map.closed:
            raise ValueError("the spool is closed")
        self._map.flush()
        self._map.close()
        os.close(self._fd)
        self._segments[-1].records = self._appended - self._live_since
        self._open(int(self._segments[-1].path.stem) + 1)

    def acknowledge(self, count: int) -> None:
        """The `count` oldest unacknowledged records are in the database."""
        if self.closed:
            return
        segments = self._segments
        segments[-1].records = self._appended - self._live_since
        while count:
            segment = segments[0]
            take = min(count, segment.records - segment.acknowledged)
            segment.acknowledged += take
            count -= take
            if segment.acknowledged < segment.records:
                break
            if len(segments) == 1:
                # Everything is in the database: empty the live segment in place,
                # zeroing what was written (its first frame's length first), so
                # that its tail is zeros again.
                log = self._map
                used = log.tell()
                log[0 : _FRAME.size] = _END
                log[0:used] = bytes(used)
                log.seek(0)
                self._live_since = self._appended
                segment.records = segment.acknowledged = 0
                break
            segments.popleft()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment.path)

    def _fsync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            self.sync()

    def sync(self) -> None:
        """Flush to disk what was appended since the last call."""
        appended = self._appended
        if appended != self._synced:
            self._synced = appended
            with contextlib.suppress(ValueError, OSError):  # rolled or closed meanwhile
                self._map.flush()

    def close(self) -> None:
        """Flush, then release the directory for the next writer."""
        if self.closed:
            return
        self._stop.set()
        self._flusher.join()
        self.sync()
        self.closed = True
        self._map.close()
        os.close(self._fd)
        os.close(self._lock_fd)
