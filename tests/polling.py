"""Waiting for a condition in tests: poll it, with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

# Generous: it bounds a failure, never a pass (CI machines are shared and slow).
DEADLINE = 60.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


async def async_wait_until(condition: Callable[[], bool], what: str) -> None:
    """`wait_until` for a condition that tasks on this loop make true."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)
