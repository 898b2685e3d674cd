"""The usage writer's local append-only log: plain file I/O, shared by both twins.

A spool directory holds numbered segment files (``00000001.log``, ...) and a
``lock`` file. Each submitted record is one line, ``<crc32 hex> <json>\\n``,
written with one `os.write` to a file opened O_APPEND before `submit` returns: from
then on it survives the process (even SIGKILL: the bytes are the kernel's). A
thread calls `fsync` every `fsync_interval` seconds when something was written
(group commit, as Redis's ``appendfsync everysec``): a power loss or kernel crash
loses at most that interval. Records are acknowledged in order as their batches
commit; a segment whose records are all acknowledged is deleted (or truncated,
when it is the one being written), so the spool holds only what is not yet in the
database. A writer started on the directory reads what is left there first, and
since (tenant_id, request_id) is idempotent, writing it again duplicates nothing.
A last line cut short by a crash (or any line whose checksum fails) is skipped and
counted. `fcntl.flock` on the lock file keeps a second live writer out; the kernel
releases it when the holder dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import zlib
from collections import deque
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Final

from .errors import InvalidInput
from .models import UsageRecord
from .validation import usage_for_write

__all__ = ["FSYNC_INTERVAL", "Spool"]

_log = logging.getLogger("tenantstore")

FSYNC_INTERVAL: Final = 1.0
# A segment is closed and a new one begun past this size; fully acknowledged
# segments are deleted, so the directory holds about what is pending.
SEGMENT_BYTES: Final = 8 * 1024 * 1024

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_crc = zlib.crc32


def encode(record: UsageRecord) -> bytes:
    """One log line for a validated, timestamped record."""
    assert record.timestamp is not None
    payload = _dumps(
        [
            record.tenant_id,
            record.request_id,
            record.model,
            record.provider,
            record.input_tokens,
            record.output_tokens,
            str(record.cost_usd),
            record.cached,
            record.latency_ms,
            record.status,
            record.timestamp.isoformat(),
        ]
    ).encode()
    return b"%08x %s\n" % (_crc(payload), payload)


def decode(line: bytes) -> UsageRecord | None:
    """The record of a whole line, or None when the line is torn or corrupt."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != _crc(payload):
            return None
        f = json.loads(payload)
        return usage_for_write(
            UsageRecord(
                tenant_id=f[0],
                request_id=f[1],
                model=f[2],
                provider=f[3],
                input_tokens=f[4],
                output_tokens=f[5],
                cost_usd=Decimal(f[6]),
                cached=f[7],
                latency_ms=f[8],
                status=f[9],
                timestamp=datetime.fromisoformat(f[10]),
            )
        )
    except (ValueError, TypeError, IndexError, ArithmeticError):  # InvalidInput too
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
    counts the torn or corrupt lines passed over to get it.
    """

    __slots__ = (
        "_appended",
        "_dirty",
        "_fd",
        "_flusher",
        "_lock",
        "_lock_fd",
        "_segments",
        "_size",
        "_stop",
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
        self._lock = threading.Lock()
        # Oldest first; the last is the one being appended to.
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
        self._open(last + 1)
        self._appended = 0
        self._dirty = False
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._fsync_loop, name="tenantstore-spool-fsync", daemon=True
        )
        self._flusher.start()

    def _read(self, path: Path) -> list[UsageRecord]:
        records = []
        with path.open("rb") as file:
            for line in file:
                record = decode(line)
                if record is None:
                    self.skipped += 1
                else:
                    records.append(record)
        return records

    def _open(self, number: int) -> None:
        path = self.directory / f"{number:08d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self._segments.append(_Segment(path, 0))
        # The new file's name must survive a crash too.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def append(self, record: UsageRecord) -> None:
        """Log `record` (the caller holds the writer's lock: order is kept)."""
        line = encode(record)
        os.write(self._fd, line)
        self._size += len(line)
        self._segments[-1].records += 1
        self._dirty = True
        if self._size >= SEGMENT_BYTES:
            os.close(self._fd)
            self._open(int(self._segments[-1].path.stem) + 1)

    def acknowledge(self, count: int) -> None:
        """The `count` oldest unacknowledged records are in the database."""
        segments = self._segments
        while count:
            segment = segments[0]
            take = min(count, segment.records - segment.acknowledged)
            segment.acknowledged += take
            count -= take
            if segment.acknowledged < segment.records:
                break
            if len(segments) == 1:
                # Everything is in the database: empty the live segment in place.
                os.ftruncate(self._fd, 0)
                self._size = 0
                segment.records = segment.acknowledged = 0
                break
            segments.popleft()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment.path)

    def _fsync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            self.sync()

    def sync(self) -> None:
        """fsync what was appended since the last call."""
        if self._dirty:
            self._dirty = False
            with contextlib.suppress(OSError):  # closed meanwhile
                os.fsync(self._fd)

    def close(self) -> None:
        """fsync, then release the directory for the next writer."""
        self._stop.set()
        self._flusher.join()
        self.sync()
        os.close(self._fd)
        os.close(self._lock_fd)
