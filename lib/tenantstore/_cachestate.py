"""The caching lookup layer's bookkeeping, without I/O, shared by both twins.

`CacheState` holds the positive entries (key hash -> `Entry`, a plain dict the hit
path reads without a lock), the negative entries, the fills in flight, the id ->
hashes index (two while a key is in grace) and the counters behind `CacheStats`.
One mechanism keeps fills honest: an epoch that every invalidation moves on. A fill
stores what it read, and is joined, only while the epoch it began in lasts; every
entry carries the epoch it was last written in, which is all a reconnecting
listener's `Revalidation` needs. All under one `threading.Lock`, never held across
I/O, so a sync listener thread and an async cache can share a state; how a fill
runs (`flight`) is the twins' business. A forked child resets every live state
(`_after_fork`): it has none of its parent's threads, listeners or locks.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from ._cachebook import Book
from ._cachestats import CacheStats
from ._keys import key_expiry
from ._models import Tenant

__all__ = ["CacheState", "Fill", "Revalidation"]

F = TypeVar("F")

# (tenant, fresh_until, expires, epoch), replaced whole: a reader without the lock
# sees an old entry or a new one. `expires`: the monotonic instant the key ends (inf:
# never), mapped from its wall-clock expiry at fill time; `fresh_until` never passes
# it, so the hit path's one compare ends the key too. `epoch`: the one it was last
# written in (by its fill, or by `_expire_all`).
Entry = tuple[Tenant, float, float, int]

_NEVER: Final = float("inf")
# Taken off a mapped expiry: float sums of the monotonic clock may round an ulp
# late, and ending an entry early costs one lookup of the store, never a wrong answer.
_MARGIN: Final = 1e-6


@dataclass(slots=True, eq=False)
class Fill(Generic[F]):
    """One inner lookup of `key`, shared by every caller that missed meanwhile.

    Begun in `epoch`: once an invalidation moved the epoch on, its outcome goes to
    the callers already waiting but is never stored, and nobody joins it any more.
    `flight` (how the twin runs it) is set by `CacheState.join`.
    """

    key: str
    started: float
    epoch: int
    flight: F = field(init=False)


@dataclass(frozen=True, slots=True)
class Revalidation:
    """What a listener that listens again must confirm (see `CacheState.resume`):
    the `keys` cached when it was taken, at `started`, when the state's epoch moved
    on to `epoch`. An entry still of an older epoch is as it was then."""

    keys: tuple[str, ...]
    started: float
    epoch: int


class CacheState(Generic[F]):
    """Entries, negative entries, fills in flight, the id index and the counters.

    `F` is the twin's flight type. `now` is the monotonic clock every time here is
    measured on (the one the hit path compares `fresh_until` with), `wall` the
    clock key expiries are read against.
    """

    def __init__(
        self,
        *,
        ttl: float,
        negative_ttl: float,
        maxsize: int,
        negative_maxsize: int,
        stale_if_error: float,
        now: Callable[[], float],
        wall: Callable[[], datetime],
    ) -> None:
        self.now = now
        self.wall = wall
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_if_error = stale_if_error
        self.lock = threading.Lock()
        # Read without the lock by the hit path: never rebound, only mutated.
        self.entries: dict[str, Entry] = {}
        self.negatives: dict[str, float] = {}
        # Tenant id -> the key hashes it is cached under (two while in grace).
        self._ids: dict[str, set[str]] = {}
        self._in_flight: dict[str, Fill[F]] = {}
        self._flying = 0  # fills not yet finished, overtaken or not (for `stats`)
        # Moved on by every invalidation; see the module docstring.
        self._epoch = 0
        # Listeners attached (started, not closed) and how many of them are not
        # listening: while any is not, nothing is stored or kept fresh.
        self._listeners = 0
        self._suspended = 0
        # An entry stays booked past its freshness for as long as it may be
        # served stale. Books are replaced, never cleared: clearing a cachetools
        # cache item by item (as some versions do) would count evictions.
        self._new_book: Callable[[], Book] = lambda: Book(
            maxsize, ttl + stale_if_error, now, self._dropped
        )
        self._new_negative_book: Callable[[], Book] = lambda: Book(
            max(negative_maxsize, 1), negative_ttl, now, self._negative_dropped
        )
        self._book = self._new_book()
        self._negative_book = self._new_negative_book()
        self._negative_enabled = negative_ttl > 0 and negative_maxsize > 0
        self.hits = self.misses = self.negative_hits = self.rejected = 0
        self.fills = self.invalidations = self.stale_serves = self.evictions = 0
        _LIVE.add(self)

    # -- lookups ---------------------------------------------------------------

    def join(
        self, key: str, new_flight: Callable[[Fill[F]], F]
    ) -> Tenant | tuple[Fill[F], bool]:
        """A fresh entry's tenant, or the fill to wait for and whether to lead it.

        Rechecks the entry under the lock: a fill that completed since the caller
        missed has stored it, and must not be repeated.
        """
        with self.lock:
            now = self.now()
            entry = self.entries.get(key)
            if entry is not None and entry[1] > now:
                self.hits += 1
                return entry[0]
            self.misses += 1
            fill = self._in_flight.get(key)
            if fill is not None and fill.epoch == self._epoch:
                return fill, False
            fill = Fill(key, now, self._epoch)
            fill.flight = new_flight(fill)
            self._in_flight[key] = fill
            self._flying += 1
            self.fills += 1
            return fill, True

    def finish(self, fill: Fill[F], tenant: Tenant) -> None:
        """Store what `fill` found, unless an invalidation overtook it."""
        with self.lock:
            self._retire(fill)
            key = fill.key
            expiry = key_expiry(tenant, key)
            if fill.epoch != self._epoch or not tenant.enabled or expiry is False:
                return
            now = self.now()
            expires = _NEVER
            if isinstance(expiry, datetime):
                expires = now + (expiry - self.wall()).total_seconds() - _MARGIN
                if expires <= now:
                    return
            self._drop_negative(key)
            # An entry of this tenant under a hash that is no longer one of its
            # keys predates a rotation.
            live = {key, tenant.api_key_hash, tenant.previous_api_key_hash}
            for other in self._ids.get(tenant.id, set()) - live:
                self._drop(other)
            # TTLs run from the fill's start (never longer than promised). While a
            # listener is down, store it expired: for stale_if_error only.
            fresh_until = fill.started if self._suspended else fill.started + self.ttl
            self._book[key] = tenant  # may expire or evict others: before the dict
            entry = (tenant, min(fresh_until, expires), expires, fill.epoch)
            self.entries[key] = entry
            self._ids.setdefault(tenant.id, set()).add(key)

    def finish_missing(self, fill: Fill[F]) -> None:
        """Record that `fill.key` belongs to no enabled tenant."""
        with self.lock:
            self._retire(fill)
            key = fill.key
            # The store just said no: an expired entry must not be served stale.
            self._drop(key)
            if fill.epoch != self._epoch or self._suspended:
                return
            if not self._negative_enabled:
                return
            fresh_until = fill.started + self.negative_ttl
            self._negative_book[key] = fresh_until
            self.negatives[key] = fresh_until

    def abandon(self, fill: Fill[F]) -> None:
        """Forget `fill` (it failed or was cancelled): nothing is stored."""
        with self.lock:
            self._retire(fill)

    def stale(self, key: str) -> Tenant | None:
        """The tenant of `key`'s entry if it may still be served stale, else None.

        Invalidated entries are removed, so only expired ones qualify, for at most
        `stale_if_error` seconds after they expired, never past their key's
        expiry. Counts the serve.
        """
        entry = self.entries.get(key)
        if entry is None:
            return None
        tenant, fresh_until, expires, _ = entry
        now = self.now()
        if fresh_until > now:  # stored by a fill that succeeded meanwhile
            return tenant
        if now >= fresh_until + self.stale_if_error or now >= expires:
            return None
        self.stale_serves += 1
        return tenant

    # -- invalidation ----------------------------------------------------------

    def invalidate(self, tenant_id: str | None, hashes: Iterable[str]) -> None:
        """Drop what could hold an older state of `tenant_id` or of `hashes`: their
        entries (never served stale) and negative entries; and move the epoch on,
        so no fill in flight stores what it read (which one returns this tenant is
        unknown until it returns) and later callers start fills of their own."""
        with self.lock:
            self.invalidations += 1
            self._epoch += 1
            if tenant_id is not None:
                for cached in list(self._ids.get(tenant_id, ())):
                    self._drop(cached)
            for key in hashes:
                self._drop(key)
                self._drop_negative(key)

    def expire_all(self) -> None:
        """Make every entry expired (kept for stale_if_error), every fill overtaken."""
        with self.lock:
            self._expire_all()

    def attach(self) -> None:
        """A listener starts: `suspend` until it listens (and `resume`s). In a
        forked child, the fork's suspension ends and this listener's begins."""
        with self.lock:
            if self._listeners == 0:
                self._suspended = 0  # a fork's, or nothing
            self._listeners += 1
            self._suspended += 1
            self._expire_all()

    def detach(self) -> None:
        """A listener closed while suspended: back to TTLs once no listener is
        left suspended (its entries were expired when it stopped listening)."""
        with self.lock:
            self._listeners = max(0, self._listeners - 1)
            self._suspended = max(0, self._suspended - 1)

    def suspend(self) -> None:
        """A listener lost its connection (or missed a heartbeat): `expire_all`,
        and store nothing fresh until `resume`, since changes now go unnoticed."""
        with self.lock:
            self._suspended += 1
            self._expire_all()

    def revalidation(self) -> Revalidation:
        """Snapshot what a listener that listens again must confirm.

        Taken after LISTEN is in effect: a change committed from then on is
        notified, one committed before shows in the query that follows. Fills in
        flight now may have read the store before LISTEN: the epoch moves on, so
        they store nothing.
        """
        with self.lock:
            self._epoch += 1
            return Revalidation(tuple(self.entries), self.now(), self._epoch)

    def resume(
        self,
        revalidation: Revalidation | None = None,
        rows: Mapping[str, Tenant] | None = None,
    ) -> int:
        """A listener is listening again; returns how many entries it dropped.

        With a `revalidation` and the `rows` its query found (key hash -> tenant,
        enabled or not): an entry of an epoch before the snapshot's is fresh again
        for `ttl` from the snapshot if its tenant is unchanged and enabled, and
        dropped (never served stale) otherwise; one of the snapshot's epoch was
        stored by a fill that read the store after LISTEN, and is fresh for `ttl`
        from that fill's start; a later one is left as it is. Never past a key's
        expiry. Without a revalidation, entries stay expired.
        """
        with self.lock:
            self._suspended = max(0, self._suspended - 1)
            if revalidation is None:
                return 0
            rows = rows or {}
            # Another listener still down: confirmed entries stay expired.
            fresh = revalidation.started + self.ttl if not self._suspended else None
            dropped = 0
            entries = self.entries
            for key, entry in list(entries.items()):
                tenant, fresh_until, expires, epoch = entry
                if entries.get(key) is not entry or epoch > revalidation.epoch:
                    continue  # evicted just now, or invalidated since the snapshot
                if epoch < revalidation.epoch:
                    row = rows.get(key)
                    if row is None or row != tenant or not row.enabled:
                        self._drop(key)
                        dropped += 1
                        continue
                    if fresh is None:
                        continue
                    fresh_until = revalidation.started
                    self._book[key] = tenant  # may expire or evict: before the dict
                if fresh is not None and key in entries:
                    fresh_until = min(fresh_until + self.ttl, expires)
                    entries[key] = (tenant, fresh_until, expires, epoch)
            return dropped

    def clear(self) -> None:
        """Drop every entry and negative entry; fills in flight store nothing."""
        with self.lock:
            self.invalidations += 1
            self._reset()

    def stats(self) -> CacheStats:
        with self.lock:
            sizes = {
                "size": len(self.entries),
                "negative_size": len(self.negatives),
                "in_flight": self._flying,
            }
            counters = {f.name: getattr(self, f.name) for f in _COUNTERS}
            return CacheStats(**counters, **sizes)

    # -- under the lock --------------------------------------------------------

    def _after_fork(self) -> None:
        # In a forked child, without the lock (a parent thread may have held it at
        # the fork, and no such thread exists here): a new lock, no fills (their
        # leaders are parent threads and would never finish), no entries (a parent
        # thread may have been midway through changing them). A cache a listener
        # kept fresh stays suspended until it has a listener of its own (`attach`).
        self.lock = threading.Lock()
        self._in_flight.clear()
        self._flying = 0
        self._reset()
        self._suspended = 1 if self._listeners else 0
        self._listeners = 0

    def _reset(self) -> None:
        # Books are replaced, never cleared (see __init__).
        self._epoch += 1
        self.entries.clear()
        self.negatives.clear()
        self._ids.clear()
        self._book = self._new_book()
        self._negative_book = self._new_negative_book()

    def _expire_all(self) -> None:
        self.invalidations += 1
        self._epoch += 1
        now, epoch = self.now(), self._epoch
        entries = self.entries
        for key, (tenant, fresh_until, expires, _) in list(entries.items()):
            if fresh_until > now:
                entries[key] = (tenant, now, expires, epoch)
        self.negatives.clear()
        self._negative_book = self._new_negative_book()

    def _retire(self, fill: Fill[F]) -> None:
        self._flying = max(0, self._flying - 1)  # 0 after a fork: not the child's
        if self._in_flight.get(fill.key) is fill:
            del self._in_flight[fill.key]

    def _drop(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._book.forget(key)
            self._unindex(entry[0].id, key)

    def _unindex(self, tenant_id: str, key: str) -> None:
        cached = self._ids.get(tenant_id, set())
        cached.discard(key)
        if not cached:
            self._ids.pop(tenant_id, None)

    def _drop_negative(self, key: str) -> None:
        if self.negatives.pop(key, None) is not None:
            self._negative_book.forget(key)

    def _dropped(self, key: str, tenant: object, evicted: bool) -> None:
        # Called by the book while it expires or evicts, under the lock.
        self.evictions += evicted
        entry = self.entries.get(key)
        if entry is not None and entry[0] is tenant:
            del self.entries[key]
            self._unindex(entry[0].id, key)

    def _negative_dropped(self, key: str, fresh_until: object, evicted: bool) -> None:
        self.evictions += evicted
        if self.negatives.get(key) is fresh_until:
            del self.negatives[key]


# CacheStats' counters: the rest are sizes, read when the snapshot is taken.
_COUNTERS: Final = [
    f
    for f in fields(CacheStats)
    if f.name not in {"size", "negative_size", "in_flight"}
]

# Every live state of this process, for `_after_fork`.
_LIVE: Final[weakref.WeakSet[CacheState[Any]]] = weakref.WeakSet()


def _after_fork() -> None:
    for state in list(_LIVE):
        state._after_fork()


os.register_at_fork(after_in_child=_after_fork)
