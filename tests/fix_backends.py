"""Backends for the contract and differential tests, and the doubles they need.

`FakeClock` is the only double of something we own the semantics of (time).
`Synced` runs an async repository's coroutines on one `asyncio.Runner`, so the async
twins join the same sync test suites.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any


class FakeClock:
    """A clock that moves only when told to (`advance`)."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self._now = start
        self._mono = 1_000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


class Synced:
    """Calls an async repository's methods as if they were sync."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._target, name)
        runner = self._runner

        def call(*args: Any, **kwargs: Any) -> Any:
            return runner.run(method(*args, **kwargs))

        return call
