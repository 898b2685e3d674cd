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
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import psycopg

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


SCENARIOS = (
    Scenario(
        "revocation",
        "raw UPDATE sent → entry gone in another process's cache, through "
        "TenantCacheListener (no listener: ttl, 30 s by default, not measured)",
        revocation,
        requires=("CachedTenantRepository", "TenantCacheListener"),
    ),
)
