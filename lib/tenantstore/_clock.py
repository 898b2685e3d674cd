"""Where time comes from: the Clock protocol and the system clock.

Stores stamp `created_at`, `updated_at` and default usage timestamps from a clock's
`now()`; caches measure TTLs on its `monotonic()`. Tests pass a fake clock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """A source of wall-clock time (aware UTC) and monotonic seconds."""

    def now(self) -> datetime:
        """Current time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


Clock.__module__ = "tenantstore"


class SystemClock:
    """The real clock: `datetime.now(UTC)` and `time.monotonic()`."""

    __module__ = "tenantstore"
    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
