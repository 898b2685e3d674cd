"""The caching lookup layer without a database: agreement, races, failures.

A state machine checks that a cached repository and a plain one agree on any
sequence of writes, disables, deletes, lookups and clock moves. The races (single
flight, a fill overtaken by a write, cancellation) are made deterministic with an
inner repository that holds a lookup open on an event after reading the store;
failures with one that raises `StoreUnavailable` on demand. Time moves only
through a fake clock; nothing here sleeps or asserts a duration.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncInMemoryTenantRepository,
    AuditEvent,
    CachedTenantRepository,
    CacheStats,
    DatabaseUnreachable,
    InMemoryTenantRepository,
    InvalidInput,
    StoreUnavailable,
    Tenant,
    TenantNotFound,
    generate_api_key,
    hash_api_key,
)
from tenantstore._keys import KEY_PREFIX
from tenantstore._notification import NOTHING, parse_notification
from tests.fix_backends import FakeClock
from tests.polling import async_wait_until, wait_until

IDS = [f"0000000{i}-abcd-4ef0-8abc-def012345678" for i in range(4)]
KEYS = [generate_api_key() for _ in range(4)] + ["sk-legacy-0001", "ключ-ünïcode"]
ODD = [
    "",
    "\x00",
    "\ud800",
    "x" * 300,
    KEY_PREFIX + "A" * 49,
    KEYS[0][:-1] + ("x" if KEYS[0][-1] != "x" else "y"),
    KEYS[0].upper(),
    "0" * 64,
    hash_api_key(KEYS[0]).upper(),
]


def tenant(n: int = 0, key: str = KEYS[0], **changes: Any) -> Tenant:
    return Tenant(id=IDS[n], name=f"t{n}", api_key_hash=hash_api_key(key), **changes)


# -- doubles -------------------------------------------------------------------


class Inner:
    """An in-memory repository that counts key lookups, and on demand holds the
    next one open after it has read the store (`hold()`) or fails them all:
    `down`, as an unreachable database does (`DatabaseUnreachable`), or `busy`, as
    a reachable but overloaded one does (a plain `StoreUnavailable`)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.real = InMemoryTenantRepository(clock=clock)
        self.lookups = 0
        self.waiting = 0
        self.down = False
        self.busy = False
        self._holds: builtins.list[threading.Event] = []
        self._lock = threading.Lock()

    def hold(self) -> threading.Event:
        """Hold the next key lookup open until the returned event is set."""
        event = threading.Event()
        with self._lock:
            self._holds.append(event)
        return event

    def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        with self._lock:
            self.lookups += 1
            hold = self._holds.pop(0) if self._holds else None
        try:
            if self.down:
                raise DatabaseUnreachable("the database is out of reach (test)")
            if self.busy:
                raise StoreUnavailable("the pool is exhausted (test)")
            return self.real.get_by_api_key_hash(api_key_hash)
        finally:
            if hold is not None:
                with self._lock:
                    self.waiting += 1
                hold.wait()

    def get_by_api_key(self, api_key: str) -> Tenant:
        raise AssertionError("the cache looks up by hash")

    def get_by_id(self, tenant_id: str) -> Tenant:
        return self.real.get_by_id(tenant_id)

    def list(self) -> builtins.list[Tenant]:
        return self.real.list()

    def create(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        return self.real.create(tenant, api_key=api_key)

    def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        return self.real.update(tenant, api_key=api_key)

    def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
        return self.real.set_enabled(tenant_id, enabled)

    def rotate_api_key(
        self,
        tenant_id: str,
        api_key: str,
        *,
        grace: timedelta = timedelta(0),
        expires_at: datetime | None = None,
    ) -> Tenant:
        return self.real.rotate_api_key(
            tenant_id, api_key, grace=grace, expires_at=expires_at
        )

    def revoke_previous_api_key(self, tenant_id: str) -> Tenant:
        return self.real.revoke_previous_api_key(tenant_id)

    def delete(self, tenant_id: str) -> None:
        self.real.delete(tenant_id)

    def reveal_api_key(self, tenant_id: str) -> str | None:
        return self.real.reveal_api_key(tenant_id)

    def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return self.real.list_audit(since, entity_id, limit, before=before)


class AsyncInner:
    """`Inner` for asyncio: holds are `asyncio.Event`s; records cancellations."""

    def __init__(self) -> None:
        self.real = AsyncInMemoryTenantRepository()
        self.lookups = 0
        self.waiting = 0
        self.cancelled = 0
        self.down = False
        self.busy = False
        self._holds: builtins.list[asyncio.Event] = []

    def hold(self) -> asyncio.Event:
        event = asyncio.Event()
        self._holds.append(event)
        return event

    async def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        self.lookups += 1
        hold = self._holds.pop(0) if self._holds else None
        try:
            if self.down:
                raise DatabaseUnreachable("the database is out of reach (test)")
            if self.busy:
                raise StoreUnavailable("the pool is exhausted (test)")
            return await self.real.get_by_api_key_hash(api_key_hash)
        finally:
            if hold is not None:
                self.waiting += 1
                try:
                    await hold.wait()
                except asyncio.CancelledError:
                    self.cancelled += 1
                    # Clean up over a few loop turns, as a driver returning its
                    # connection would: the fill stays unfinished meanwhile.
                    for _ in range(3):
                        await asyncio.sleep(0)
                    raise

    async def get_by_api_key(self, api_key: str) -> Tenant:
        raise AssertionError("the cache looks up by hash")

    async def get_by_id(self, tenant_id: str) -> Tenant:
        return await self.real.get_by_id(tenant_id)

    async def list(self) -> builtins.list[Tenant]:
        return await self.real.list()

    async def create(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        return await self.real.create(tenant, api_key=api_key)

    async def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        return await self.real.update(tenant, api_key=api_key)

    async def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
        return await self.real.set_enabled(tenant_id, enabled)

    async def rotate_api_key(
        self,
        tenant_id: str,
        api_key: str,
        *,
        grace: timedelta = timedelta(0),
        expires_at: datetime | None = None,
    ) -> Tenant:
        return await self.real.rotate_api_key(
            tenant_id, api_key, grace=grace, expires_at=expires_at
        )

    async def revoke_previous_api_key(self, tenant_id: str) -> Tenant:
        return await self.real.revoke_previous_api_key(tenant_id)

    async def delete(self, tenant_id: str) -> None:
        await self.real.delete(tenant_id)

    async def reveal_api_key(self, tenant_id: str) -> str | None:
        return await self.real.reveal_api_key(tenant_id)

    async def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return await self.real.list_audit(since, entity_id, limit, before=before)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so that races happen within a short test."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# -- agreement with the uncached repository -----------------------------------


def lookup_by_key(repo: Any, key: str) -> Tenant:
    found: Tenant = repo.get_by_api_key(key)
    return found


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:  # compared by type: both must raise the same
        return ("error", type(exc))


MACHINE_IDS = IDS[:3]
MACHINE_KEYS = [*KEYS[:3], "sk-legacy-0001"]
slots = st.integers(0, len(MACHINE_IDS) - 1)
machine_keys = st.sampled_from(MACHINE_KEYS)
odd_lookups = st.one_of(st.sampled_from([*ODD, *KEYS[4:]]), st.text(max_size=60))
# "around": as another process would write, followed by its listener's invalidate.
via = st.sampled_from(["cache", "around"])


class CacheAgreement(RuleBasedStateMachine):
    """A cached repository answers exactly as the repository it wraps would.

    A plain repository and a cached one (over a twin of it) get the same writes,
    through the cache or around it followed by the `invalidate` a listener would
    make, and must give the same answers and the same errors; small sizes make
    evictions happen, and the clock moves across TTLs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.plain = InMemoryTenantRepository(clock=self.clock)
        self.behind = InMemoryTenantRepository(clock=self.clock)
        self.cached = CachedTenantRepository(
            self.behind,
            ttl=10,
            negative_ttl=3,
            maxsize=3,
            negative_maxsize=2,
            stale_if_error=5,
            clock=self.clock,
        )

    def agree(self, call: Callable[[Any], Any]) -> None:
        expected = outcome(lambda: call(self.plain))
        assert outcome(lambda: call(self.cached)) == expected

    def write(self, route: str, tenant_id: str, t: Tenant | None) -> None:
        """Update (or, with `t` None, delete) on both sides by `route`."""
        if route == "cache":
            if t is None:
                self.agree(lambda repo: repo.delete(tenant_id))
            else:
                self.agree(lambda repo: repo.update(t))
            return
        before = outcome(lambda: self.plain.get_by_id(tenant_id))
        hashes = [before[1].api_key_hash] if before[0] == "ok" else []
        if t is None:
            expected = outcome(lambda: self.plain.delete(tenant_id))
            assert outcome(lambda: self.behind.delete(tenant_id)) == expected
        else:
            expected = outcome(lambda: self.plain.update(t))
            assert outcome(lambda: self.behind.update(t)) == expected
            hashes.append(t.api_key_hash)
        self.cached.invalidate(tenant_id, hashes)

    @initialize()
    def two_tenants(self) -> None:
        for n in (0, 1):
            self.create(n, MACHINE_KEYS[n], enabled=True)

    @rule(n=slots, key=machine_keys, enabled=st.booleans())
    def create(self, n: int, key: str, enabled: bool) -> None:
        t = Tenant(
            id=MACHINE_IDS[n],
            name=f"t{n}",
            api_key_hash=hash_api_key(key),
            enabled=enabled,
        )
        self.agree(lambda repo: repo.create(t))

    @rule(
        n=slots,
        change=st.sampled_from(["disable", "enable", "rpm", "rotate"]),
        key=machine_keys,
        route=via,
    )
    def update(self, n: int, change: str, key: str, route: str) -> None:
        found = outcome(lambda: self.plain.get_by_id(MACHINE_IDS[n]))
        current = found[1] if found[0] == "ok" else tenant(n, key)
        changes: dict[str, dict[str, Any]] = {
            "disable": {"enabled": False},
            "enable": {"enabled": True},
            "rpm": {"rate_limit_rpm": current.rate_limit_rpm + 1},
            "rotate": {"api_key_hash": hash_api_key(key)},
        }
        changed = changes[change]
        self.write(route, current.id, dataclasses.replace(current, **changed))

    @rule(n=slots, route=via)
    def delete(self, n: int, route: str) -> None:
        self.write(route, MACHINE_IDS[n], None)

    @rule(key=machine_keys)
    def lookup(self, key: str) -> None:
        self.agree(lambda repo: repo.get_by_api_key(key))
        self.agree(lambda repo: repo.get_by_api_key_hash(hash_api_key(key)))

    @rule(odd=odd_lookups)
    def odd_lookup(self, odd: str) -> None:
        self.agree(lambda repo: repo.get_by_api_key(odd))
        self.agree(lambda repo: repo.get_by_api_key_hash(odd))

    @rule(n=slots)
    def get_by_id(self, n: int) -> None:
        self.agree(lambda repo: repo.get_by_id(MACHINE_IDS[n]))

    @rule()
    def list(self) -> None:
        self.agree(lambda repo: repo.list())

    @rule(seconds=st.sampled_from([0.5, 2.9, 3.0, 4.0, 9.9, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(how=st.sampled_from(["expire_all", "clear"]))
    def forget(self, how: str) -> None:
        getattr(self.cached, how)()

    @rule(
        unnoticed=st.lists(
            st.tuples(slots, st.sampled_from(["disable", "enable", "rotate"])),
            max_size=2,
        ),
        key=machine_keys,
        looked_up=st.lists(machine_keys, max_size=2),
        meanwhile=st.sampled_from(["nothing", "expire_all", "lookup"]),
    )
    def listener_reconnects(
        self,
        unnoticed: builtins.list[tuple[int, str]],
        key: str,
        looked_up: builtins.list[str],
        meanwhile: str,
    ) -> None:
        """The listener loses its connection; writes go on unnoticed (no
        invalidate) and lookups fill while it is down; it listens again and
        revalidates against what the store holds, as `_listen` does, with an
        `expire_all` or a lookup `meanwhile` (while its query runs)."""
        state = self.cached._state
        state.suspend()
        for n, change in unnoticed:
            found = outcome(partial(self.plain.get_by_id, MACHINE_IDS[n]))
            if found[0] != "ok":
                continue
            changes: dict[str, dict[str, Any]] = {
                "disable": {"enabled": False},
                "enable": {"enabled": True},
                "rotate": {"api_key_hash": hash_api_key(key)},
            }
            t = dataclasses.replace(found[1], **changes[change])
            expected = outcome(partial(self.plain.update, t))
            assert outcome(partial(self.behind.update, t)) == expected
        for looked in looked_up:
            self.agree(partial(lookup_by_key, key=looked))
        snapshot = state.revalidation()
        if meanwhile == "expire_all":
            self.cached.expire_all()
        elif meanwhile == "lookup":
            self.agree(partial(lookup_by_key, key=key))
        rows: dict[str, Tenant] = {}
        for t in self.behind.list():
            for cached in (t.api_key_hash, t.previous_api_key_hash):
                if cached in snapshot.keys:
                    rows[cached] = t
        state.resume(snapshot, rows)

    @invariant()
    def every_key_agrees(self) -> None:
        # Checked after every step, so a stale answer cannot hide until a rule
        # happens to look that key up (lookups also warm the cache for the next).
        for key in MACHINE_KEYS:
            self.agree(partial(lookup_by_key, key=key))

    @invariant()
    def bounded(self) -> None:
        stats = self.cached.stats()
        assert stats.size <= 3
        assert stats.negative_size <= 2
        assert stats.in_flight == 0


TestCacheAgreement = CacheAgreement.TestCase


# -- the hit path, negative entries, rejected keys -----------------------------


def test_hits_are_served_from_memory_and_counted() -> None:
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner)
    first = cache.get_by_api_key(KEYS[0])
    assert cache.get_by_api_key(KEYS[0]) is first
    assert cache.get_by_api_key_hash(hash_api_key(KEYS[0])) is first
    assert inner.lookups == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.fills, stats.size) == (2, 1, 1, 1)


def test_entries_expire_after_ttl() -> None:
    clock = FakeClock()
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner, ttl=10, clock=clock)
    cache.get_by_api_key(KEYS[0])
    clock.advance(9.999)
    cache.get_by_api_key(KEYS[0])
    assert inner.lookups == 1
    clock.advance(0.001)
    cache.get_by_api_key(KEYS[0])
    assert inner.lookups == 2


def test_unknown_keys_are_remembered_for_negative_ttl() -> None:
    clock = FakeClock()
    inner = Inner()
    cache = CachedTenantRepository(inner, negative_ttl=5, clock=clock)
    for _ in range(3):
        with pytest.raises(TenantNotFound):
            cache.get_by_api_key(KEYS[1])
    assert inner.lookups == 1
    assert cache.stats().negative_hits == 2
    clock.advance(5)
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[1])
    assert inner.lookups == 2


def test_create_through_the_cache_forgets_the_key_was_unknown() -> None:
    cache = CachedTenantRepository(Inner())
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[1])
    created = cache.create(tenant(1, KEYS[1]))
    assert cache.get_by_api_key(KEYS[1]) == created


def test_disabled_tenant_is_not_found_and_cached_as_such() -> None:
    inner = Inner()
    inner.create(tenant(enabled=False))
    cache = CachedTenantRepository(inner)
    for _ in range(2):
        with pytest.raises(TenantNotFound):
            cache.get_by_api_key(KEYS[0])
    assert inner.lookups == 1
    assert cache.stats().size == 0


@given(
    position=st.integers(len(KEY_PREFIX), len(KEYS[0]) - 1),
    char=st.sampled_from(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    ),
)
def test_a_forged_key_never_reaches_the_store(position: int, char: str) -> None:
    key = KEYS[0]
    forged = key[:position] + char + key[position + 1 :]
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner)
    if forged == key:
        assert cache.get_by_api_key(forged).id == IDS[0]
        return
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(forged)
    stats = cache.stats()
    assert inner.lookups == 0
    assert (stats.rejected, stats.size, stats.negative_size) == (1, 0, 0)


@pytest.mark.parametrize("odd", [*ODD, None, 42, b"bytes", ["list"]])
def test_odd_lookups_are_not_found(odd: Any) -> None:
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner)
    for lookup in (cache.get_by_api_key, cache.get_by_api_key_hash):
        with pytest.raises(TenantNotFound):
            lookup(odd)


def test_a_flood_of_unknown_keys_cannot_evict_tenants() -> None:
    inner = Inner()
    for n in range(3):
        inner.create(tenant(n, KEYS[n]))
    cache = CachedTenantRepository(inner, maxsize=3, negative_maxsize=10)
    for n in range(3):
        cache.get_by_api_key(KEYS[n])
    for _ in range(200):
        with pytest.raises(TenantNotFound):
            cache.get_by_api_key(generate_api_key())
    lookups = inner.lookups
    for n in range(3):
        cache.get_by_api_key(KEYS[n])
    assert inner.lookups == lookups
    stats = cache.stats()
    assert (stats.size, stats.negative_size, stats.evictions) == (3, 10, 190)


def test_a_full_cache_evicts_its_oldest_entry() -> None:
    inner = Inner()
    for n in range(3):
        inner.create(tenant(n, KEYS[n]))
    cache = CachedTenantRepository(inner, maxsize=2)
    for n in range(3):
        cache.get_by_api_key(KEYS[n])
    assert (cache.stats().size, cache.stats().evictions) == (2, 1)
    cache.get_by_api_key(KEYS[2])
    assert inner.lookups == 3
    cache.get_by_api_key(KEYS[0])
    assert inner.lookups == 4


def test_rotating_a_key_through_the_cache_drops_the_old_key() -> None:
    inner = Inner()
    stored = inner.create(tenant())
    cache = CachedTenantRepository(inner)
    cache.get_by_api_key(KEYS[0])
    cache.update(dataclasses.replace(stored, api_key_hash=hash_api_key(KEYS[1])))
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])
    assert cache.get_by_api_key(KEYS[1]).id == stored.id


def test_a_failed_write_still_invalidates() -> None:
    class Failing(Inner):
        def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
            self.real.update(tenant, api_key=api_key)
            raise StoreUnavailable("the connection broke before the reply")

    inner = Failing()
    stored = inner.create(tenant())
    cache = CachedTenantRepository(inner)
    cache.get_by_api_key(KEYS[0])
    with pytest.raises(StoreUnavailable):
        cache.update(dataclasses.replace(stored, enabled=False))
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])


def test_set_enabled_through_the_cache_revokes_and_restores_at_once() -> None:
    inner = Inner()
    stored = inner.create(tenant())
    cache = CachedTenantRepository(inner)
    assert cache.get_by_api_key(KEYS[0]).id == stored.id  # cached
    disabled = cache.set_enabled(stored.id, False)
    assert disabled.enabled is False
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])  # the entry went; "unknown" is now cached
    lookups = inner.lookups
    assert cache.set_enabled(stored.id, True).enabled is True
    # The negative entry under its hash went too: the next lookup asks the store.
    assert cache.get_by_api_key(KEYS[0]).enabled is True
    assert inner.lookups == lookups + 1


def test_a_failed_set_enabled_still_invalidates() -> None:
    class Failing(Inner):
        def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
            self.real.set_enabled(tenant_id, enabled)
            raise StoreUnavailable("the connection broke before the reply")

    inner = Failing()
    stored = inner.create(tenant())
    cache = CachedTenantRepository(inner)
    cache.get_by_api_key(KEYS[0])
    with pytest.raises(StoreUnavailable):
        cache.set_enabled(stored.id, False)
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])


def test_set_enabled_of_an_odd_id_through_the_cache_is_not_found() -> None:
    cache = CachedTenantRepository(Inner())
    for odd in ("", IDS[0].upper(), ["x"], None):
        with pytest.raises(TenantNotFound):
            cache.set_enabled(odd, False)  # type: ignore[arg-type]


def test_reads_by_id_and_list_pass_through() -> None:
    inner = Inner()
    stored = inner.create(tenant(enabled=False))
    cache = CachedTenantRepository(inner)
    assert cache.get_by_id(stored.id) == stored
    assert cache.list() == [stored]
    assert cache.reveal_api_key(stored.id) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ttl", 0),
        ("ttl", -1),
        ("ttl", float("nan")),
        ("ttl", float("inf")),
        ("ttl", "30"),
        ("negative_ttl", -1),
        ("stale_if_error", True),
        ("maxsize", 0),
        ("maxsize", 1.5),
        ("negative_maxsize", -1),
    ],
)
def test_settings_are_checked(name: str, value: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        CachedTenantRepository(Inner(), **{name: value})
    assert info.value.field == name


def test_negative_caching_can_be_turned_off() -> None:
    inner = Inner()
    cache = CachedTenantRepository(inner, negative_ttl=0)
    for _ in range(2):
        with pytest.raises(TenantNotFound):
            cache.get_by_api_key(KEYS[1])
    assert inner.lookups == 2


def test_stats_is_a_snapshot() -> None:
    stats = CachedTenantRepository(Inner()).stats()
    assert stats == CacheStats(
        hits=0,
        misses=0,
        negative_hits=0,
        rejected=0,
        fills=0,
        invalidations=0,
        stale_serves=0,
        evictions=0,
        size=0,
        negative_size=0,
        in_flight=0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 1  # type: ignore[misc]


# -- stale-if-error ------------------------------------------------------------


def stale_setup(**settings: Any) -> tuple[FakeClock, Inner, CachedTenantRepository]:
    clock = FakeClock()
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner, ttl=10, clock=clock, **settings)
    cache.get_by_api_key(KEYS[0])
    return clock, inner, cache


def test_stale_if_error_serves_an_expired_entry_within_the_bound() -> None:
    clock, inner, cache = stale_setup(stale_if_error=5)
    inner.down = True
    clock.advance(10)
    assert cache.get_by_api_key(KEYS[0]).id == IDS[0]
    clock.advance(4.999)
    assert cache.get_by_api_key(KEYS[0]).id == IDS[0]
    assert cache.stats().stale_serves == 2
    clock.advance(0.001)
    with pytest.raises(StoreUnavailable):
        cache.get_by_api_key(KEYS[0])
    inner.down = False
    assert cache.get_by_api_key(KEYS[0]).id == IDS[0]


def test_fail_closed_by_default() -> None:
    clock, inner, cache = stale_setup()
    inner.down = True
    clock.advance(10)
    with pytest.raises(StoreUnavailable):
        cache.get_by_api_key(KEYS[0])


@pytest.mark.parametrize(
    "forget",
    [
        lambda cache: cache.invalidate(IDS[0]),
        lambda cache: cache.invalidate(hashes=[hash_api_key(KEYS[0])]),
        lambda cache: cache.clear(),
    ],
)
def test_an_invalidated_entry_is_never_served_stale(
    forget: Callable[[CachedTenantRepository], None],
) -> None:
    clock, inner, cache = stale_setup(stale_if_error=60)
    forget(cache)
    inner.down = True
    with pytest.raises(StoreUnavailable):
        cache.get_by_api_key(KEYS[0])
    clock.advance(11)
    with pytest.raises(StoreUnavailable):
        cache.get_by_api_key(KEYS[0])


def test_expire_all_makes_entries_stale_not_gone() -> None:
    clock, inner, cache = stale_setup(stale_if_error=5)
    clock.advance(1)
    cache.expire_all()
    assert cache.get_by_api_key(KEYS[0]).id == IDS[0]  # looked up again
    assert inner.lookups == 2
    cache.expire_all()
    inner.down = True
    clock.advance(4.999)
    assert cache.get_by_api_key(KEYS[0]).id == IDS[0]
    clock.advance(0.001)
    with pytest.raises(StoreUnavailable):
        cache.get_by_api_key(KEYS[0])


def test_an_entry_the_store_no_longer_knows_is_not_served_stale() -> None:
    clock, inner, cache = stale_setup(stale_if_error=60)
    inner.real.update(tenant(enabled=False))  # around the cache, unnoticed
    clock.advance(10)
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])
    clock.advance(5)  # past the negative entry
    inner.down = True
    with pytest.raises(StoreUnavailable):
        cache.get_by_api_key(KEYS[0])


# -- threads -------------------------------------------------------------------


def spawn(target: Callable[[], Any]) -> tuple[threading.Thread, builtins.list[Any]]:
    """Run `target` on a thread; the list receives its result or exception."""
    box: builtins.list[Any] = []

    def run() -> None:
        try:
            box.append(target())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.parametrize("fails", [False, True])
def test_concurrent_misses_make_one_inner_lookup(fails: bool) -> None:
    inner = Inner()
    inner.create(tenant())
    inner.down = fails
    cache = CachedTenantRepository(inner)
    release = inner.hold()
    callers = [spawn(lambda: cache.get_by_api_key(KEYS[0])) for _ in range(8)]
    wait_until(lambda: cache.stats().misses == 8, "all 8 callers joined the fill")
    release.set()
    for thread, _ in callers:
        thread.join()
    results = [box[0] for _, box in callers]
    if fails:
        assert all(isinstance(r, StoreUnavailable) for r in results)
    else:
        assert all(isinstance(r, Tenant) and r.id == IDS[0] for r in results)
    assert inner.lookups == 1
    assert cache.stats().fills == 1


def test_a_waiter_gives_up_on_a_stuck_fill_at_its_bound() -> None:
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner, wait_timeout=0.05)
    release = inner.hold()
    leader, led = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill is stuck in the store")
    with pytest.raises(StoreUnavailable) as raised:
        cache.get_by_api_key(KEYS[0])
    assert not isinstance(raised.value, DatabaseUnreachable)  # never served stale
    release.set()
    leader.join()
    assert isinstance(led[0], Tenant)  # the leader's own call is not cut short
    assert inner.lookups == 1


def test_the_wait_bound_follows_the_inner_repositorys_timeout() -> None:
    class Bounded(Inner):
        timeout = 2.0

    assert CachedTenantRepository(Bounded())._wait_timeout == 5.0
    assert CachedTenantRepository(Inner())._wait_timeout is None
    with pytest.raises(InvalidInput, match="wait_timeout"):
        CachedTenantRepository(Inner(), wait_timeout=0)


def test_a_fill_overtaken_by_a_write_is_not_stored() -> None:
    inner = Inner()
    stored = inner.create(tenant(rate_limit_rpm=1))
    cache = CachedTenantRepository(inner)
    release = inner.hold()
    thread, box = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill has read the store")
    cache.update(dataclasses.replace(stored, rate_limit_rpm=2))
    release.set()
    thread.join()
    assert box[0].rate_limit_rpm == 1  # it started before the write: allowed
    assert cache.get_by_api_key(KEYS[0]).rate_limit_rpm == 2
    assert inner.lookups == 2


def test_a_lookup_after_a_write_does_not_join_an_older_fill() -> None:
    inner = Inner()
    stored = inner.create(tenant(rate_limit_rpm=1))
    cache = CachedTenantRepository(inner)
    release = inner.hold()
    thread, box = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill has read the store")
    cache.update(dataclasses.replace(stored, rate_limit_rpm=2))
    assert cache.get_by_api_key(KEYS[0]).rate_limit_rpm == 2
    release.set()
    thread.join()
    assert box[0].rate_limit_rpm == 1
    assert cache.get_by_api_key(KEYS[0]).rate_limit_rpm == 2
    assert inner.lookups == 2


def test_a_fill_of_a_rotated_key_is_not_stored() -> None:
    # The old key was never cached, so only the tenant id tells the fill apart.
    inner = Inner()
    stored = inner.create(tenant())
    cache = CachedTenantRepository(inner)
    release = inner.hold()
    thread, box = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill has read the store")
    cache.update(dataclasses.replace(stored, api_key_hash=hash_api_key(KEYS[1])))
    release.set()
    thread.join()
    assert box[0].id == IDS[0]
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])
    assert inner.lookups == 2


def test_a_miss_overtaken_by_a_create_is_not_remembered() -> None:
    # Only the key hash tells this fill apart: it found no tenant to have an id.
    inner = Inner()
    cache = CachedTenantRepository(inner)
    release = inner.hold()
    thread, box = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill has read the store")
    cache.create(tenant())
    release.set()
    thread.join()
    assert isinstance(box[0], TenantNotFound)
    assert cache.get_by_api_key(KEYS[0]).id == IDS[0]


def test_a_fill_in_flight_when_everything_expires_is_not_stored() -> None:
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner)
    release = inner.hold()
    thread, _ = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill has read the store")
    cache.expire_all()
    release.set()
    thread.join()
    cache.get_by_api_key(KEYS[0])
    assert inner.lookups == 2


def test_an_invalidation_from_elsewhere_discards_a_racing_fill() -> None:
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner)
    release = inner.hold()
    thread, _ = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill has read the store")
    inner.real.delete(IDS[0])  # as another process would, then its notification:
    cache.invalidate(IDS[0], [hash_api_key(KEYS[0])])
    release.set()
    thread.join()
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])


def test_readers_never_see_a_state_older_than_a_returned_write(
    fast_switching: None,
) -> None:
    """Version v of the tenant has rate_limit_rpm == v and is disabled when v % 5
    == 0. A reader notes the last version whose write returned before it looks
    up; what it gets must be that version or a later one."""

    class Yielding(Inner):
        def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
            found = outcome(lambda: self.real.get_by_api_key_hash(api_key_hash))
            time.sleep(0)  # let a write land between the read and the store
            if found[0] == "ok":
                result: Tenant = found[1]
                return result
            raise TenantNotFound("no such tenant")

    inner = Yielding()
    current = inner.create(tenant(rate_limit_rpm=1))
    cache = CachedTenantRepository(inner)
    published = 1
    done = threading.Event()
    violations: builtins.list[str] = []

    def read() -> None:
        while not done.is_set():
            floor = published
            try:
                seen: int | None = cache.get_by_api_key(KEYS[0]).rate_limit_rpm
            except TenantNotFound:
                seen = None
            ceiling = published + 1  # a write may have landed, not yet returned
            if seen is None:
                ok = any(v % 5 == 0 for v in range(floor, ceiling + 1))
            else:
                ok = floor <= seen <= ceiling and seen % 5 != 0
            if not ok:
                violations.append(f"saw {seen} after version {floor} returned")

    readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
    for reader in readers:
        reader.start()
    for version in range(2, 400):
        current = cache.update(
            dataclasses.replace(
                current, rate_limit_rpm=version, enabled=version % 5 != 0
            )
        )
        published = version
    done.set()
    for reader in readers:
        reader.join()
    assert violations == []
    assert cache.stats().hits > 0


# -- asyncio -------------------------------------------------------------------


def run(runner: asyncio.Runner, test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    runner.run(test())


async def async_setup(
    **settings: Any,
) -> tuple[AsyncInner, AsyncCachedTenantRepository]:
    inner = AsyncInner()
    await inner.create(tenant(rate_limit_rpm=1))
    return inner, AsyncCachedTenantRepository(inner, **settings)


def test_async_hits_and_writes(runner: asyncio.Runner) -> None:
    async def test() -> None:
        inner, cache = await async_setup()
        first = await cache.get_by_api_key(KEYS[0])
        assert await cache.get_by_api_key(KEYS[0]) is first
        assert await cache.get_by_api_key_hash(hash_api_key(KEYS[0])) is first
        await cache.update(dataclasses.replace(first, enabled=False))
        with pytest.raises(TenantNotFound):
            await cache.get_by_api_key(KEYS[0])
        await cache.delete(IDS[0])
        with pytest.raises(TenantNotFound):
            await cache.get_by_id(IDS[0])
        assert await cache.list() == []
        assert inner.lookups == 2

    run(runner, test)


def test_async_concurrent_misses_make_one_inner_lookup(
    runner: asyncio.Runner,
) -> None:
    async def test() -> None:
        inner, cache = await async_setup()
        release = inner.hold()
        lookups = asyncio.gather(*(cache.get_by_api_key(KEYS[0]) for _ in range(10)))
        await async_wait_until(lambda: cache.stats().misses == 10, "all joined")
        release.set()
        results = await lookups
        assert {t.id for t in results} == {IDS[0]}
        assert inner.lookups == 1

    run(runner, test)


@pytest.mark.parametrize("cancelled", ["leader", "follower"])
def test_a_cancelled_waiter_does_not_cancel_the_fill(
    runner: asyncio.Runner, cancelled: str
) -> None:
    async def test() -> None:
        inner, cache = await async_setup()
        release = inner.hold()
        leader = asyncio.create_task(cache.get_by_api_key(KEYS[0]))
        await async_wait_until(lambda: inner.waiting == 1, "the fill started")
        follower = asyncio.create_task(cache.get_by_api_key(KEYS[0]))
        await async_wait_until(lambda: cache.stats().misses == 2, "both joined")
        gone, stays = (
            (leader, follower) if cancelled == "leader" else (follower, leader)
        )
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        release.set()
        assert (await stays).id == IDS[0]
        assert inner.cancelled == 0
        await cache.get_by_api_key(KEYS[0])
        assert inner.lookups == 1  # the fill was stored

    run(runner, test)


def test_async_a_waiter_gives_up_on_a_stuck_fill_at_its_bound(
    runner: asyncio.Runner,
) -> None:
    async def test() -> None:
        inner, cache = await async_setup(wait_timeout=0.05)
        release = inner.hold()
        leader = asyncio.create_task(cache.get_by_api_key(KEYS[0]))
        await async_wait_until(lambda: inner.waiting == 1, "the fill is stuck")
        with pytest.raises(StoreUnavailable):
            await cache.get_by_api_key(KEYS[0])
        release.set()
        assert (await leader).id == IDS[0]
        assert (inner.lookups, inner.cancelled) == (1, 0)

    run(runner, test)


def test_a_cancelled_sole_lookup_leaves_nothing_behind(runner: asyncio.Runner) -> None:
    async def test() -> None:
        inner, cache = await async_setup()
        inner.hold()
        lookup = asyncio.create_task(cache.get_by_api_key(KEYS[0]))
        await async_wait_until(lambda: inner.waiting == 1, "the fill started")
        lookup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lookup
        # The abandoned fill is out of the table at once: a newcomer starts afresh
        # and is not handed the cancellation.
        assert (await cache.get_by_api_key(KEYS[0])).id == IDS[0]
        await async_wait_until(lambda: inner.cancelled == 1, "the fill was cancelled")
        stats = cache.stats()
        assert (stats.size, stats.in_flight, inner.lookups) == (1, 0, 2)

    run(runner, test)


def test_async_a_fill_overtaken_by_a_write_is_not_stored(
    runner: asyncio.Runner,
) -> None:
    async def test() -> None:
        inner, cache = await async_setup()
        release = inner.hold()
        early = asyncio.create_task(cache.get_by_api_key(KEYS[0]))
        await async_wait_until(lambda: inner.waiting == 1, "the fill read the store")
        stored = await inner.get_by_id(IDS[0])
        await cache.update(dataclasses.replace(stored, rate_limit_rpm=2))
        late = await cache.get_by_api_key(KEYS[0])
        assert late.rate_limit_rpm == 2
        release.set()
        assert (await early).rate_limit_rpm == 1
        assert (await cache.get_by_api_key(KEYS[0])).rate_limit_rpm == 2
        assert inner.lookups == 2

    run(runner, test)


def test_async_stale_if_error(runner: asyncio.Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        inner, cache = await async_setup(ttl=10, stale_if_error=5, clock=clock)
        await cache.get_by_api_key(KEYS[0])
        inner.down = True
        clock.advance(14.999)
        assert (await cache.get_by_api_key(KEYS[0])).id == IDS[0]
        clock.advance(0.001)
        with pytest.raises(StoreUnavailable):
            await cache.get_by_api_key(KEYS[0])

    run(runner, test)


# -- listener payloads ---------------------------------------------------------


H1, H2 = hashlib.sha256(b"1").hexdigest(), hashlib.sha256(b"2").hexdigest()


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        (f'{{"op":"UPDATE","id":"{IDS[1]}","old":"{H1}","new":"{H2}"}}', (H1, H2)),
        (f'{{"op":"INSERT","id":"{IDS[1]}","old":null,"new":"{H2}"}}', (H2,)),
        (f'{{"op":"DELETE","id":"{IDS[1]}","old":"{H1}","new":null}}', (H1,)),
        (f'{{"op":"DELETE","id":"{IDS[1]}","old":"{H1.upper()}","new":null}}', ()),
        ('{"op":"TRUNCATE"}', None),
        (f'{{"op":"UPDATE","id":"{IDS[1].upper()}","old":null,"new":null}}', None),
        (f'{{"op":"UPDATE","id":"{IDS[1]}","old":1,"new":null}}', None),
        ('{"op":"MERGE"}', None),
        ("[]", None),
        ("not json", None),
        ("", None),
    ],
)
def test_notification_payloads(payload: str, parsed: tuple[str, ...] | None) -> None:
    assert parse_notification(payload) == (None if parsed is None else (IDS[1], parsed))


def test_while_suspended_nothing_is_served_as_fresh() -> None:
    inner = Inner()
    inner.create(tenant())
    cache = CachedTenantRepository(inner)
    cache.get_by_api_key(KEYS[0])
    cache._state.suspend()
    for expected in (2, 3):
        cache.get_by_api_key(KEYS[0])
        assert inner.lookups == expected
    cache._state.resume()
    cache.get_by_api_key(KEYS[0])
    cache.get_by_api_key(KEYS[0])
    assert inner.lookups == 4


def test_a_heartbeat_payload_changes_nothing() -> None:
    assert parse_notification('{"op": "PING", "n": 7}') is NOTHING


# -- stale_if_error: only while the database is out of reach --------------------


def test_a_busy_store_is_never_answered_stale() -> None:
    clock, inner, cache = stale_setup(stale_if_error=60)
    clock.advance(10)
    inner.busy = True  # reachable but overloaded: the error surfaces
    with pytest.raises(StoreUnavailable) as info:
        cache.get_by_api_key(KEYS[0])
    assert not isinstance(info.value, DatabaseUnreachable)
    inner.busy, inner.down = False, True
    assert cache.get_by_api_key(KEYS[0]).id == IDS[0]
    assert cache.stats().stale_serves == 1


def test_async_a_busy_store_is_never_answered_stale(runner: asyncio.Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        inner, cache = await async_setup(ttl=10, stale_if_error=60, clock=clock)
        await cache.get_by_api_key(KEYS[0])
        clock.advance(10)
        inner.busy = True
        with pytest.raises(StoreUnavailable) as info:
            await cache.get_by_api_key(KEYS[0])
        assert not isinstance(info.value, DatabaseUnreachable)
        assert cache.stats().stale_serves == 0

    run(runner, test)


# -- revalidation after a listener reconnects ----------------------------------


def revalidating(n: int = 3) -> tuple[Inner, CachedTenantRepository, list[Tenant]]:
    """A cache with `n` entries whose listener has just lost its connection."""
    inner = Inner()
    made = [inner.create(tenant(i, KEYS[i])) for i in range(n)]
    cache = CachedTenantRepository(inner)
    for i in range(n):
        cache.get_by_api_key(KEYS[i])
    cache._state.attach()  # a listener starts: suspended until it listens
    return inner, cache, made


def rows_of(inner: Inner) -> dict[str, Tenant]:
    """What the revalidation query would return: every tenant, by key hash."""
    return {t.api_key_hash: t for t in inner.real.list()}


def test_revalidation_keeps_the_unchanged_and_drops_the_rest() -> None:
    inner, cache, made = revalidating()
    state = cache._state
    inner.real.update(dataclasses.replace(made[0], enabled=False))
    inner.real.update(dataclasses.replace(made[1], rate_limit_rpm=9))
    snapshot = state.revalidation()
    assert state.resume(snapshot, rows_of(inner)) == 2
    lookups = inner.lookups
    assert cache.get_by_api_key(KEYS[2]) == made[2]  # fresh again: no query
    assert inner.lookups == lookups
    assert cache.get_by_api_key(KEYS[1]).rate_limit_rpm == 9  # dropped: asked
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])
    assert inner.lookups == lookups + 2


def test_an_entry_invalidated_during_revalidation_is_not_resurrected() -> None:
    inner, cache, made = revalidating(2)
    state = cache._state
    snapshot = state.revalidation()
    rows = rows_of(inner)  # the query saw the tenant unchanged, and then:
    inner.real.update(dataclasses.replace(made[0], enabled=False))
    cache.invalidate(made[0].id, [made[0].api_key_hash])  # its notification
    state.resume(snapshot, rows)
    with pytest.raises(TenantNotFound):
        cache.get_by_api_key(KEYS[0])
    assert cache.get_by_api_key(KEYS[1]) == made[1]


def test_an_entry_refilled_during_revalidation_is_left_as_the_fill_stored_it() -> None:
    inner, cache, made = revalidating(1)
    state = cache._state
    snapshot = state.revalidation()
    inner.real.update(dataclasses.replace(made[0], rate_limit_rpm=5))
    cache.invalidate(made[0].id, [])  # notified; then a lookup refills it
    assert cache.get_by_api_key(KEYS[0]).rate_limit_rpm == 5
    state.resume(snapshot, {made[0].api_key_hash: made[0]})  # the older row
    assert cache.get_by_api_key(KEYS[0]).rate_limit_rpm == 5


def test_a_fill_in_flight_at_the_snapshot_is_not_stored() -> None:
    # It may have read the store before LISTEN: what it found went unnoticed.
    inner, cache, made = revalidating(1)
    state = cache._state
    cache.invalidate(hashes=[made[0].api_key_hash])
    release = inner.hold()
    thread, _ = spawn(lambda: cache.get_by_api_key(KEYS[0]))
    wait_until(lambda: inner.waiting == 1, "the fill has read the store")
    state.resume(state.revalidation(), rows_of(inner))
    release.set()  # it finishes after the resume, and must still not be stored
    thread.join()
    lookups = inner.lookups
    cache.get_by_api_key(KEYS[0])
    assert inner.lookups == lookups + 1


def test_a_dropped_entry_is_never_served_stale() -> None:
    inner = Inner()
    made = inner.create(tenant())
    cache = CachedTenantRepository(inner, stale_if_error=3600)
    cache.get_by_api_key(KEYS[0])
    cache._state.attach()
    inner.real.delete(made.id)
    cache._state.resume(cache._state.revalidation(), rows_of(inner))
    inner.down = True
    with pytest.raises(DatabaseUnreachable):
        cache.get_by_api_key(KEYS[0])


def test_with_another_listener_down_nothing_is_made_fresh() -> None:
    inner, cache, _ = revalidating(1)
    state = cache._state
    state.attach()  # a second listener, not listening yet
    state.resume(state.revalidation(), rows_of(inner))
    lookups = inner.lookups
    cache.get_by_api_key(KEYS[0])
    assert inner.lookups == lookups + 1


def test_a_fill_begun_after_the_snapshot_is_fresh_after_the_resume() -> None:
    # It read the store after LISTEN: a later change would be notified.
    inner, cache, made = revalidating(2)
    state = cache._state
    snapshot = state.revalidation()
    cache.get_by_api_key(KEYS[0])  # an expired entry refilled meanwhile
    state.resume(snapshot, rows_of(inner))
    lookups = inner.lookups
    assert cache.get_by_api_key(KEYS[0]) == made[0]
    assert cache.get_by_api_key(KEYS[1]) == made[1]
    assert inner.lookups == lookups
