"""`CacheStats`, the snapshot a `CachedTenantRepository` reports (see `_cachestate`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CacheStats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """A snapshot of a `CachedTenantRepository`'s counters and sizes.

    Every key lookup counts once, as exactly one of: `hits` (a fresh entry),
    `negative_hits` (a fresh "no such key" entry), `rejected` (malformed, or a key in
    our format whose checksum fails: answered without a query or a slot), or
    `misses` (asked the inner store, or joined a caller already asking). `fills`
    counts inner lookups, so `misses - fills` callers were spared one by single
    flight. `invalidations` counts `invalidate()`, `expire_all()` and `clear()` calls
    (writes through the cache, notifications, listener drops); `stale_serves` the
    answers given from an expired entry while the store was unavailable; `evictions`
    the entries dropped to make room (`maxsize` too small, or a flood of unknown
    keys filling the negative cache). `size`, `negative_size` and
    `in_flight` are current. Counters updated without the lock (the hit path) may
    miss an increment when threads race: they are monitoring figures, not ledgers.
    """

    __module__ = "tenantstore"

    hits: int
    misses: int
    negative_hits: int
    rejected: int
    fills: int
    invalidations: int
    stale_serves: int
    evictions: int
    size: int
    negative_size: int
    in_flight: int
