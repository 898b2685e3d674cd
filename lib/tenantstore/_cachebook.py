"""cachetools' size and age bookkeeping for the key cache's plain dicts.

The cache's hit path reads a plain dict without a lock; `Book` keeps the size bound
(LRU eviction) and the age bound (TTL expiry) beside it, and says what it drops so
the dict drops it too (see `_cachestate`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from cachetools import TTLCache

__all__ = ["Book"]


class Book(TTLCache[str, object, float]):
    """cachetools' size and age bookkeeping for one fast dict.

    The hit path never touches it (a `TTLCache.get` costs more than the whole hit
    budget); it is told of every store and removal, and tells the state, through
    `on_drop`, what it expires or evicts (and whether it evicted) so the fast dict
    drops it too. Its values are the stored objects themselves, so a drop can check
    by identity that the fast dict still holds what was booked.
    """

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float],
        on_drop: Callable[[str, object, bool], None],
    ) -> None:
        super().__init__(maxsize, ttl, timer)
        self._on_drop = on_drop

    def expire(self, time: float | None = None) -> list[tuple[str, object]]:
        expired = super().expire(time)
        for key, value in expired:
            self._on_drop(key, value, False)
        return expired

    def popitem(self) -> tuple[str, object]:
        key, value = super().popitem()
        self._on_drop(key, value, True)
        return key, value

    def forget(self, key: str) -> None:
        """Drop `key`'s bookkeeping, expired or not (`pop` skips expired keys)."""
        with contextlib.suppress(KeyError):
            del self[key]
