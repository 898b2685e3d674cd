"""The cross-process revocation bound: a change made elsewhere reaching a cache.

A second "process" — its own pool, `CachedTenantRepository` and
`TenantCacheListener`, sharing nothing with the writer but the database, as in
tests/test_invalidation.py — has a tenant's key cached. A raw psycopg autocommit
connection (psql, the Go service) runs `UPDATE tenants SET enabled = …`, alternately
disabling and re-enabling the tenant so that every sample is a real change. A sample
is the time from sending the UPDATE until that cache no longer serves the old state:
the cache state's `invalidate` is wrapped to stamp `perf_counter()` when it returns,
on the listener's thread, and to set an event (no polling of the cache). After the
event, untimed, a lookup through the cache must show the new state (`TenantNotFound`
when disabled, the tenant when enabled), and before each sample the old state must be
served from memory (a hit, or a negative hit).

The floor is the same UPDATE with a hand-written listener: a psycopg connection
that LISTENs on the trigger's channel and stamps each notification as it arrives
(`notifies()`), in the thread that sent the UPDATE. Ours ÷ floor is what the listener
adds to delivery: its thread waking, reading the payload, invalidating. Each side
has a scratch database of its own with one tenant, so neither listener is woken by
the other's notifications. Without a listener the bound is the cache's `ttl` (30 s
by default): a constant, not measured.

cpu/op here is this process's CPU time over the sample, all threads (the writer's
and the listener's), not the calling thread's alone.

`revocation-frozen` is the bound when notifications cannot arrive: the listener's
path runs through a TCP proxy (tests/tcpproxy.py) that is frozen before the raw
UPDATE is committed, so only the heartbeat (defaults: a ping every 1 s, 2 s to come
back) can tell. A sample is the time from sending the UPDATE (it commits at once:
the writer's path is not frozen) until a lookup through the cache — polled every
millisecond, as requests would — refuses the key; then, untimed, the path is healed,
the listener listens again and the key is served from memory again. The reference
is the same stack and the same polling with the path left open (delivery by
notification).

`reconnect-cost` counts what a listener reconnect costs the store under load: N
cached tenants, every key looked up in a loop, the listener's backend terminated
(`pg_terminate_backend`). A sample runs from the termination until a whole pass
over the keys is served from memory again; the figures of interest are in the
notes: store queries per reconnect, measured once per variant before timing (the
fills the loop made, plus the listener's revalidation query). "before" is the
same stack doing what the listener did until now on reconnect: expire everything
(`expire_all`), so that every key is filled again.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import psycopg

from benchmarks.data import make_tenants
from benchmarks.measure import CheckFailed, Sampled, Series, Variant
from benchmarks.scenario import Context, Scenario, export
from tenantstore import (
    PostgresTenantRepository,
    Tenant,
    TenantNotFound,
    create_pool,
    generate_api_key,
    hash_api_key,
    migrate,
)
from tests.pgserver import scratch_database
from tests.tcpproxy import TcpProxy, tcp_proxy

__all__ = ["SCENARIOS"]

CHANNEL = "tenantstore_tenants"  # the trigger's (migrations/008)
SET_ENABLED = "UPDATE tenants SET enabled = %s WHERE id = %s"
DEADLINE = 10.0  # a notification not applied by then fails the scenario


def _delivery(
    before: Callable[[bool], None],
    send: Callable[[bool], None],
    delivered: Callable[[], float],
    after: Callable[[bool], None],
) -> Series:
    """Each sample flips the tenant (disable, enable, disable, …): `before(enabled)`
    and `after(enabled)` run untimed; the time is from just before `send(enabled)`
    to the stamp `delivered()` returns (perf_counter, taken where it arrived)."""
    enabled = True  # the state the tenant is in now
    clock, cpu_clock = time.perf_counter, time.process_time

    def series(n: int) -> Sampled:
        nonlocal enabled
        times, cpu = [0.0] * n, [0.0] * n
        for i in range(n):
            enabled = not enabled
            before(enabled)
            c0 = cpu_clock()
            t0 = clock()
            send(enabled)
            stamp = delivered()
            c1 = cpu_clock()
            times[i] = stamp - t0
            cpu[i] = c1 - c0
            after(enabled)
        return Sampled(times, cpu, n)

    return series


def _database(stack: contextlib.ExitStack, role: str) -> str:
    url = stack.enter_context(scratch_database(f"tenantstore_bench_{role}"))
    migrate.up(url)
    return url


def _sender(stack: contextlib.ExitStack, url: str) -> Callable[[str, bool], None]:
    conn = stack.enter_context(psycopg.connect(url, autocommit=True))

    def send(tenant_id: str, enabled: bool) -> None:
        conn.execute(SET_ENABLED, (enabled, tenant_id), prepare=True)

    return send


def _ours(stack: contextlib.ExitStack, url: str) -> Variant:
    key = generate_api_key()
    pool = stack.enter_context(create_pool(url, min_size=1, max_size=2))
    repo = PostgresTenantRepository(pool)
    # Created before the listener starts: its INSERT is not delivered to it.
    tenant = repo.create(Tenant(name="ours", api_key_hash=hash_api_key(key)))
    cache = export("CachedTenantRepository")(repo, ttl=86_400.0, negative_ttl=86_400.0)
    listener = stack.enter_context(export("TenantCacheListener")(url, cache))
    if not listener.wait_connected(DEADLINE):
        raise RuntimeError("the cache listener did not connect")

    state = cache._state
    invalidate = state.invalidate
    applied = threading.Event()
    stamps: list[float] = []

    def stamped(*args: Any) -> None:  # on the listener's thread
        invalidate(*args)
        stamps.append(time.perf_counter())
        applied.set()

    stack.enter_context(mock.patch.object(state, "invalidate", stamped))
    cache.get_by_api_key(key)  # cached
    send = _sender(stack, url)

    def before(enabling: bool) -> None:
        # The old state is served from memory: a hit on the tenant before it is
        # disabled, a negative hit ("no such tenant") before it is enabled again.
        was = cache.stats()
        with contextlib.suppress(TenantNotFound):
            cache.get_by_api_key(key)
        now = cache.stats()
        served = (
            now.negative_hits - was.negative_hits if enabling else now.hits - was.hits
        )
        if served != 1:
            old = "refusal" if enabling else "tenant"
            raise CheckFailed(
                f"before the UPDATE, the {old} was not served from memory"
            )
        stamps.clear()
        applied.clear()

    def delivered() -> float:
        if not applied.wait(DEADLINE):
            raise CheckFailed(f"no notification applied within {DEADLINE} s")
        return stamps[0]

    def after(enabled: bool) -> None:
        try:
            found = cache.get_by_api_key(key)
        except TenantNotFound:
            if enabled:
                raise CheckFailed("re-enabled tenant still refused") from None
            return
        if not enabled or found.id != tenant.id:
            raise CheckFailed(f"disabled tenant still served: {found!r}")

    return Variant(
        "TenantCacheListener: UPDATE sent → entry gone",
        "ours",
        _delivery(before, lambda e: send(tenant.id, e), delivered, after),
        note="stamped in CacheState.invalidate, on the listener's thread",
    )


def _floor(stack: contextlib.ExitStack, url: str) -> Variant:
    with create_pool(url, min_size=1, max_size=1) as pool:
        tenant_id = (
            PostgresTenantRepository(pool)
            .create(Tenant(name="floor", api_key_hash=hash_api_key(generate_api_key())))
            .id
        )
    listen = stack.enter_context(psycopg.connect(url, autocommit=True))
    listen.execute(f"LISTEN {CHANNEL}")
    send = _sender(stack, url)
    payloads: list[str] = []

    def before(enabling: bool) -> None:
        payloads.clear()

    def delivered() -> float:
        # Closed at once: the generator holds the connection's lock.
        with contextlib.closing(
            listen.notifies(timeout=DEADLINE, stop_after=1)
        ) as notifies:
            for notify in notifies:
                stamp = time.perf_counter()
                payloads.append(notify.payload)
                return stamp
        raise CheckFailed(f"no notification within {DEADLINE} s")

    def after(enabled: bool) -> None:
        change = json.loads(payloads[0])
        if change.get("op") != "UPDATE" or change.get("id") != tenant_id:
            raise CheckFailed(f"unexpected notification {payloads[0]!r}")

    return Variant(
        "floor: hand-written LISTEN, psycopg notifies()",
        "floor",
        _delivery(before, lambda e: send(tenant_id, e), delivered, after),
        note="the trigger's NOTIFY, stamped on arrival",
    )


@contextlib.contextmanager
def revocation(ctx: Context) -> Iterator[list[Variant]]:
    with contextlib.ExitStack() as stack:
        ours = _ours(stack, _database(stack, "revoke_ours"))
        floor = _floor(stack, _database(stack, "revoke_floor"))
        yield [ours, floor]


POLL = 0.001  # seconds between lookups while waiting for a refusal
HEARTBEAT_INTERVAL = 1.0  # the listener's default (`heartbeat[0]`)
RECONNECT_TENANTS = 1_000


def _refused(cache: Any, key: str) -> bool:
    try:
        cache.get_by_api_key(key)
    except TenantNotFound:
        return True
    return False


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 3 * DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out waiting until {what}")
        time.sleep(POLL)


def _frozen_variant(stack: contextlib.ExitStack, url: str, *, frozen: bool) -> Variant:
    """Disable by raw SQL, poll the cache until it refuses; `frozen`: with the
    listener's path frozen first."""
    key = generate_api_key()
    proxy: TcpProxy = stack.enter_context(tcp_proxy(url))
    pool = stack.enter_context(create_pool(url, min_size=1, max_size=2))
    repo = PostgresTenantRepository(pool)
    tenant = repo.create(Tenant(name="frozen", api_key_hash=hash_api_key(key)))
    cache = export("CachedTenantRepository")(repo, ttl=86_400.0)
    listener = stack.enter_context(export("TenantCacheListener")(proxy.url(url), cache))
    send = _sender(stack, url)
    clock, cpu_clock = time.perf_counter, time.process_time

    def warm() -> None:
        proxy.passthrough()
        _wait(lambda: listener.connected, "the listener listens")
        send(tenant.id, True)
        hits = cache.stats().hits
        _wait(
            lambda: not _refused(cache, key) and cache.stats().hits > hits,
            "the key is served from memory",
        )

    phase = random.Random(7)

    def series(n: int) -> Sampled:
        times, cpu = [0.0] * n, [0.0] * n
        for i in range(n):
            warm()
            # Freeze at any point of the heartbeat's cycle, not just after a ping.
            time.sleep(phase.uniform(0.0, HEARTBEAT_INTERVAL))
            if frozen:
                proxy.freeze()
            c0 = cpu_clock()
            t0 = clock()
            send(tenant.id, False)
            while not _refused(cache, key):
                if clock() - t0 > 3 * DEADLINE:
                    raise CheckFailed("a disabled tenant kept authenticating")
                time.sleep(POLL)
            times[i] = clock() - t0
            cpu[i] = cpu_clock() - c0
        return Sampled(times, cpu, n)

    if frozen:
        return Variant(
            "listener path frozen: UPDATE sent → key refused",
            "ours",
            series,
            note="detected by the heartbeat (ping every 1 s, 2 s to come back)",
        )
    return Variant(
        "listener path open: UPDATE sent → key refused",
        "reference",
        series,
        note="delivered by notification; the same polling",
    )


@contextlib.contextmanager
def revocation_frozen(ctx: Context) -> Iterator[list[Variant]]:
    with contextlib.ExitStack() as stack:
        ours = _frozen_variant(stack, _database(stack, "frozen_ours"), frozen=True)
        ref = _frozen_variant(stack, _database(stack, "frozen_ref"), frozen=False)
        yield [ours, ref]


def _reconnect_variant(
    stack: contextlib.ExitStack, url: str, n: int, *, expire: bool
) -> Variant:
    made = make_tenants(n, "reconnect" + ("-before" if expire else ""))
    pool = stack.enter_context(create_pool(url, min_size=1, max_size=4))
    repo = PostgresTenantRepository(pool)
    for t in made.tenants:
        repo.create(t)
    keys = made.keys
    cache = export("CachedTenantRepository")(repo, ttl=86_400.0, maxsize=2 * n)
    listener = stack.enter_context(
        export("TenantCacheListener")(url, cache, reconnect_backoff=(0.05, 1.0))
    )
    killer = stack.enter_context(psycopg.connect(url, autocommit=True))
    clock, cpu_clock = time.perf_counter, time.process_time
    get = cache.get_by_api_key

    def full_pass() -> int:
        """Look every key up once; how many store queries that cost."""
        fills = cache.stats().fills
        for key in keys:
            get(key)
        return int(cache.stats().fills - fills)

    _wait(lambda: listener.connected, "the listener listens")
    while full_pass():
        pass

    def reconnect() -> tuple[int, int]:
        """Terminate the listener's backend under the loop, until warm again:
        (store queries, of which after the listener listened again)."""
        fills, queries = cache.stats().fills, listener.revalidations
        reconnects = listener.reconnects
        killer.execute("SELECT pg_terminate_backend(%s)", (listener.backend_pid,))
        while not (listener.reconnects > reconnects and listener.connected):
            full_pass()
        if expire:
            cache.expire_all()  # what a reconnect did before revalidation
        after = full_pass()
        while full_pass():
            pass
        total = int(cache.stats().fills - fills)
        if not expire:
            total += listener.revalidations - queries
        if after != (n if expire else 0):
            raise CheckFailed(f"{after} of {n} keys filled after the reconnect")
        return total, after

    total, after = reconnect()
    window = total - after - (0 if expire else 1)

    def series(m: int) -> Sampled:
        times, cpu = [0.0] * m, [0.0] * m
        for i in range(m):
            c0 = cpu_clock()
            t0 = clock()
            reconnect()
            times[i] = clock() - t0
            cpu[i] = cpu_clock() - c0
        return Sampled(times, cpu, m)

    # The counts go in the label: the table shows labels, not notes.
    if expire:
        return Variant(
            f"before, expire all: {total} queries ({window} down + {after})",
            "reference",
            series,
            note=f"{total} store queries: {window} while down + {after} refills",
        )
    return Variant(
        f"revalidate: {total} queries ({window} down + 1)",
        "ours",
        series,
        note=f"{total} store queries: {window} while down + 1 revalidation + 0 refills",
    )


@contextlib.contextmanager
def reconnect_cost(ctx: Context) -> Iterator[list[Variant]]:
    n = min(RECONNECT_TENANTS, ctx.sizes.tenants)
    with contextlib.ExitStack() as stack:
        ours = _reconnect_variant(
            stack, _database(stack, "reconnect_ours"), n, expire=False
        )
        before = _reconnect_variant(
            stack, _database(stack, "reconnect_before"), n, expire=True
        )
        yield [ours, before]


SCENARIOS = (
    Scenario(
        "revocation",
        "raw UPDATE sent → entry gone in another process's cache, through "
        "TenantCacheListener (no listener: ttl, 30 s by default, not measured)",
        revocation,
        requires=("CachedTenantRepository", "TenantCacheListener"),
    ),
    Scenario(
        "revocation-frozen",
        "raw UPDATE sent → key refused in another process's cache while its "
        "listener's path is frozen (the heartbeat bound)",
        revocation_frozen,
        requires=("CachedTenantRepository", "TenantCacheListener"),
        quick=False,
    ),
    Scenario(
        "reconnect-cost",
        "listener reconnect under a lookup loop over 1,000 cached tenants (fewer "
        "in --tiny): backend terminated → every key served from memory again",
        reconnect_cost,
        requires=("CachedTenantRepository", "TenantCacheListener"),
    ),
)
