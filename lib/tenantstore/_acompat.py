"""Paired primitives so one source serves both twins: the async name and its sync twin.

unasync maps each async name here to its sync partner (`ALock` -> `Lock`, ...), so the
generated `_sync/` modules import the sync side. Nothing here does I/O of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["AEvent", "ALock", "Event", "Lock", "asleep", "aspawn", "sleep", "spawn"]

Lock = threading.Lock
ALock = asyncio.Lock
Event = threading.Event
AEvent = asyncio.Event
sleep = time.sleep
asleep = asyncio.sleep


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
