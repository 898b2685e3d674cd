# Generated from _async/ by tools/gen_sync.py: do not edit by hand.
"""The caching lookup layer: `AsyncCachedTenantRepository`, a repository over another.

Key lookups (by key or by hash) are answered from memory when fresh, by one shared
inner lookup when not; everything else passes through, and writes invalidate before
they return. The bookkeeping (entries, fills, invalidation, stats) is `_cachestate`,
shared by both twins; this module only decides who calls the inner repository and
who waits. Cross-process invalidation is `listener.py`'s.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Final

from .._acompat import Flight
from .._audit import AuditEvent
from .._cachestate import CacheState, Fill
from .._cachestats import CacheStats
from .._clock import Clock, SystemClock
from .._keys import is_plausible_api_key, is_tagged_api_key, key_secrets
from .._models import Tenant
from .._validation import is_key_hash
from ..errors import DatabaseUnreachable, InvalidInput, TenantNotFound
from .protocols import TenantRepository

__all__ = ["CachedTenantRepository"]

_log = logging.getLogger("tenantstore.cache")

# Bound once: the hit path pays for a global load and a call, nothing more.
_sha256: Final = hashlib.sha256
# str's own encode, not the key's: a str subclass is looked up by its characters
# (whatever its methods say), on a hit as on a miss (`_keys.lookup_hash`); anything
# else raises TypeError.
_encode: Final = str.encode


def _not_found() -> TenantNotFound:
    return TenantNotFound("no such tenant")


def _seconds(name: str, value: float, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(name, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise InvalidInput(name, "must be finite and " + (">= 0" if zero else "> 0"))
    return float(value)


def _count(name: str, value: int, *, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(name, f"must be an int, not {type(value).__name__}")
    if value < (0 if zero else 1):
        raise InvalidInput(name, "must be >= 0" if zero else "must be >= 1")
    return value


class CachedTenantRepository:
    """A tenant repository that answers key lookups from memory, safely.

    Wraps any tenant repository (`inner`) and is one itself. `get_by_api_key` and
    `get_by_api_key_hash` are cached by key hash (never by plaintext) for `ttl`
    seconds; a key no enabled tenant owns is remembered for `negative_ttl` seconds
    in a separate cache of `negative_maxsize` entries, so a flood of guessed keys
    cannot evict real tenants (`maxsize` entries). A key in our format whose
    checksum fails (a typo) is rejected without a query or a slot; a forged one
    passes (the checksum is public) and costs one query, then a negative slot. With
    `key_secret` (the secret, or several while it rotates, given to
    `generate_api_key(secret=...)`), `get_by_api_key` asks the store only for keys
    that secret tagged: any other key (forged, untagged, another format) is
    rejected without a query, so set it once every key in use carries the tag
    (`get_by_api_key_hash` cannot be checked: a hash carries no tag). Concurrent
    misses for one key make one inner lookup; the others wait for its result or
    its error, for at most `wait_timeout` seconds (default: 2 x the inner
    repository's `timeout` + 1 s, its worst case; unbounded for an inner store
    without a `timeout`), then raise `StoreUnavailable`.

    Guarantees:

    - A disabled tenant is never returned by key (the inner store says so, and
      that answer is cached as "not found").
    - `create`, `update` and `delete` through this object invalidate before they
      return (also when they fail: a write may have happened before the error), and
      a lookup that read the store before such a write is never stored after it:
      a lookup that starts after a write returned sees that write or a later state.
    - Writes made elsewhere (another process, SQL) are seen after at most `ttl`
      seconds, or as soon as a listener attached to this cache (see
      `TenantCacheListener`, `AsyncTenantCacheListener`) delivers the change;
      while that listener is disconnected nothing is served from memory as fresh.
    - With `stale_if_error > 0`, while the inner store raises
      `DatabaseUnreachable` (the database is down or out of reach; never for a
      busy one: an exhausted pool or a statement timeout is a plain
      `StoreUnavailable` and surfaces), an expired (never an invalidated) entry
      is served for at most that many seconds after it expired, and counted in
      `stats().stale_serves`; past that, the error surfaces. Off (0) by default:
      the cache fails closed.
    - A key is looked up by its characters: a `str` subclass is found (or not)
      exactly as the equal `str` is. A key hash must be a `str` itself, as in
      every repository: a subclass is nobody's hash.

    `get_by_id`, `list` and `reveal_api_key` pass through uncached. `clock` is for
    tests: its `monotonic()` measures the TTLs (the system clock by default). The
    cache is thread-safe; the asyncio twin belongs to one event loop (a shared lookup
    is a task on the loop of the caller that started it).
    """

    __module__ = "tenantstore"

    def __init__(
        self,
        inner: TenantRepository,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        maxsize: int = 100_000,
        negative_maxsize: int = 10_000,
        stale_if_error: float = 0.0,
        key_secret: bytes | Sequence[bytes] | None = None,
        wait_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.inner = inner
        # True from the first stale serve until the store answers again: one
        # WARNING per outage, not one per request served stale.
        self._serving_stale = False
        self._stale_if_error = stale_if_error
        # How long a caller waits on a lookup another caller leads. The leader is
        # bounded by the inner repository (a PostgreSQL one answers or fails within
        # about 2 x its `timeout` + 1 s: the pool wait, then the statement); a
        # waiter gives up at that bound too, whatever the inner repository is.
        inner_timeout = getattr(inner, "timeout", None)
        if wait_timeout is None and isinstance(inner_timeout, int | float):
            wait_timeout = 2 * inner_timeout + 1
        self._wait_timeout = (
            None if wait_timeout is None else _seconds("wait_timeout", wait_timeout)
        )
        # What a presented key must pass before the store is asked.
        self._plausible: Callable[[object], bool] = (
            is_plausible_api_key
            if key_secret is None
            else partial(is_tagged_api_key, ring=key_secrets(key_secret))
        )
        # The hit path calls this on every lookup: the system clock's method would
        # add a Python frame, time.monotonic is a C function.
        self._now = (
            time.monotonic
            if clock is None or type(clock) is SystemClock
            else clock.monotonic
        )
        self._state: CacheState[Flight[Tenant]] = CacheState(
            ttl=_seconds("ttl", ttl),
            negative_ttl=_seconds("negative_ttl", negative_ttl, zero=True),
            maxsize=_count("maxsize", maxsize),
            negative_maxsize=_count("negative_maxsize", negative_maxsize, zero=True),
            stale_if_error=_seconds("stale_if_error", stale_if_error, zero=True),
            now=self._now,
            wall=partial(datetime.now, UTC) if clock is None else clock.now,
        )
        self._entries = self._state.entries

    # -- cached lookups ----------------------------------------------------------

    def get_by_api_key(self, api_key: str) -> Tenant:
        """The enabled tenant whose key this is; `TenantNotFound` otherwise.

        A hit costs a SHA-256 of the key, a dict lookup and a clock read: no lock,
        nothing that could be done at construction.
        """
        try:
            key_hash = _sha256(_encode(api_key)).hexdigest()
        except (TypeError, UnicodeEncodeError):
            # Not a str, or lone surrogates: nobody's key. Raised outside the
            # handler: a UnicodeEncodeError holds the whole key, and would ride
            # along as the __context__ of what we raise.
            key_hash = None
        if key_hash is None:
            return self._lookup(None)
        entry = self._entries.get(key_hash)
        if entry is not None and entry[1] > self._now():
            self._state.hits += 1
            return entry[0]
        return self._lookup(key_hash, api_key)

    def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        """As `get_by_api_key`, for callers that hashed the key already."""
        # Exactly a str, as `is_key_hash` (the repositories' rule) wants: a
        # subclass could hash and compare as it likes.
        entry = self._entries.get(api_key_hash) if type(api_key_hash) is str else None
        if entry is not None and entry[1] > self._now():
            self._state.hits += 1
            return entry[0]
        return self._lookup(api_key_hash if is_key_hash(api_key_hash) else None)

    def _lookup(self, key: str | None, api_key: str | None = None) -> Tenant:
        """The miss path for hash `key` (None: nobody's key); `api_key`, when
        given, must pass its checksum before the store is asked."""
        state = self._state
        if key is None:
            state.rejected += 1
            raise _not_found()
        # A remembered miss answers before the checksum (or tag): only keys that
        # passed it are ever remembered, and the hash is already at hand.
        fresh_until = state.negatives.get(key)
        if fresh_until is not None and fresh_until > self._now():
            state.negative_hits += 1
            raise _not_found()
        if api_key is not None and not self._plausible(str.__str__(api_key)):
            state.rejected += 1
            raise _not_found()
        joined = state.join(key, self._new_flight)
        if isinstance(joined, Tenant):
            return joined
        fill, leader = joined
        try:
            if leader:
                return fill.flight.lead()
            return fill.flight.wait(self._wait_timeout)
        except DatabaseUnreachable:
            # Only while the database is out of reach: a busy one (pool
            # exhausted, statement timeout) answers again soon, and serving a
            # possibly revoked tenant then would trade safety for nothing.
            stale = state.stale(key)
            if stale is None:
                raise
            if not self._serving_stale:
                self._serving_stale = True
                _log.warning(
                    "tenant cache: the database is unreachable; serving expired "
                    "entries for up to %g s (stale_if_error) until it answers",
                    self._stale_if_error,
                )
            return stale

    def _new_flight(self, fill: Fill[Flight[Tenant]]) -> Flight[Tenant]:
        state = self._state

        def call() -> Tenant:
            return self._fill(fill)

        def on_orphaned() -> None:
            state.abandon(fill)

        return Flight(call, on_orphaned)

    def _fill(self, fill: Fill[Flight[Tenant]]) -> Tenant:
        state = self._state
        try:
            tenant = self.inner.get_by_api_key_hash(fill.key)
        except TenantNotFound:
            state.finish_missing(fill)
            self._answered()
            raise
        except BaseException:
            state.abandon(fill)
            raise
        state.finish(fill, tenant)
        self._answered()
        return tenant

    def _answered(self) -> None:
        if self._serving_stale:
            self._serving_stale = False
            _log.info("tenant cache: the database answers again; stale serves ended")

    # -- pass-through reads ------------------------------------------------------

    def get_by_id(self, tenant_id: str) -> Tenant:
        """The tenant, enabled or not, from the inner store (not cached)."""
        return self.inner.get_by_id(tenant_id)

    def list(self) -> builtins.list[Tenant]:
        """Every tenant, from the inner store (not cached)."""
        return self.inner.list()

    def reveal_api_key(self, tenant_id: str) -> str | None:
        """The tenant's plaintext key, from the inner store (never cached)."""
        return self.inner.reveal_api_key(tenant_id)

    def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        """The inner store's audit log (not cached)."""
        return self.inner.list_audit(since, entity_id, limit, before=before)

    # -- writes: invalidate before returning -------------------------------------

    def create(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        """`inner.create`, then forget that the new key was unknown."""
        try:
            return self.inner.create(tenant, api_key=api_key)
        finally:
            self._state.invalidate(None, _hashes(tenant))

    def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        """`inner.update`, then drop the tenant's entries (under its old key
        hashes) and anything cached under its new ones, its previous key's
        included (an update that enables the tenant revives that key too)."""
        hashes = _hashes(tenant)
        try:
            stored = self.inner.update(tenant, api_key=api_key)
            hashes += _hashes(stored)
            return stored
        finally:
            self._state.invalidate(_tenant_id(tenant), hashes)

    def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
        """`inner.set_enabled`, then drop the tenant's entry and anything cached
        under its key hash (a disabled tenant's key is remembered as unknown)."""
        hashes: tuple[str, ...] = ()
        try:
            tenant = self.inner.set_enabled(tenant_id, enabled)
            hashes = _hashes(tenant)
            return tenant
        finally:
            # On failure the hash is unknown; dropping by id still revokes a
            # cached tenant, and an enable that may have committed is at worst
            # refused until its negative entry expires: fail closed.
            self._state.invalidate(
                tenant_id if type(tenant_id) is str else None, hashes
            )

    def rotate_api_key(
        self,
        tenant_id: str,
        api_key: str,
        *,
        grace: timedelta = timedelta(0),
        expires_at: datetime | None = None,
    ) -> Tenant:
        """`inner.rotate_api_key`, then drop the tenant's entries (old and
        previous keys) and anything cached under the new key."""
        hashes: tuple[str, ...] = ()
        try:
            tenant = self.inner.rotate_api_key(
                tenant_id, api_key, grace=grace, expires_at=expires_at
            )
            hashes = _hashes(tenant)
            return tenant
        finally:
            self._state.invalidate(
                tenant_id if type(tenant_id) is str else None, hashes
            )

    def revoke_previous_api_key(self, tenant_id: str) -> Tenant:
        """`inner.revoke_previous_api_key`, then drop the tenant's entries."""
        try:
            return self.inner.revoke_previous_api_key(tenant_id)
        finally:
            self._state.invalidate(tenant_id if type(tenant_id) is str else None, ())

    def delete(self, tenant_id: str) -> None:
        """`inner.delete`, then drop the tenant's entry."""
        try:
            self.inner.delete(tenant_id)
        finally:
            self._state.invalidate(tenant_id if type(tenant_id) is str else None, ())

    # -- control -----------------------------------------------------------------

    def invalidate(
        self, tenant_id: str | None = None, hashes: Iterable[str] = ()
    ) -> None:
        """Forget what is cached for `tenant_id` and for the key `hashes`.

        Entries go (never served stale); lookups in flight that could return an
        older state are not stored, and later lookups do not wait for them. For a
        write made around this cache: call it after the write committed.
        """
        if isinstance(hashes, str):  # one hash, not its characters
            hashes = (hashes,)
        self._state.invalidate(tenant_id, [h for h in hashes if type(h) is str])

    def expire_all(self) -> None:
        """Make every entry expired: each is looked up again before use, and may
        only be served under `stale_if_error`. Lookups in flight are not stored."""
        self._state.expire_all()

    def clear(self) -> None:
        """Drop every entry and negative entry (counters are kept)."""
        self._state.clear()

    def stats(self) -> CacheStats:
        """Counters since creation and current sizes (see `CacheStats`)."""
        return self._state.stats()


def _tenant_id(tenant: object) -> str | None:
    value = getattr(tenant, "id", None)
    return value if type(value) is str else None


def _hashes(tenant: object) -> tuple[str, ...]:
    values = (
        getattr(tenant, "api_key_hash", None),
        getattr(tenant, "previous_api_key_hash", None),
    )
    return tuple(value for value in values if type(value) is str)
