"""The backbone: every backend, driven by the same random operations, agrees.

A hypothesis state machine applies each operation to the in-memory and PostgreSQL
backends, sync and async, and asserts after every step that all returned the same
value or raised the same error type (and, for `InvalidInput`, named the same
field). Ids, keys and request ids come from small pools so operations collide.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncInMemoryTenantRepository,
    AsyncInMemoryUsageRepository,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    CachedTenantRepository,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    InvalidInput,
    KeyCipher,
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    TenantStoreError,
    UsageRecord,
    create_async_pool,
    create_pool,
    hash_api_key,
)
from tests import strategies as s
from tests.fix_backends import FakeClock, Synced
from tests.fix_postgres import truncate

TENANT_FIELDS = [
    "name",
    "budget_usd",
    "rate_limit_rpm",
    "allowed_models",
    "default_provider",
    "fallback_providers",
    "enabled",
]
USAGE_FIELDS = [
    "request_id",
    "model",
    "provider",
    "input_tokens",
    "cost_usd",
    "cached",
    "status",
    "timestamp",
]
CIPHER = KeyCipher({"k1": bytes(range(32))})
# Lifetimes the tick rule crosses (it moves by 0, 1 us, 1 s, 1 h or 1 day), and some
# rotations get wrong.
GRACES = st.sampled_from(
    [
        *(timedelta(0), timedelta(0), timedelta(microseconds=1)),
        *(timedelta(seconds=1), timedelta(hours=1), timedelta(hours=-1), 60),
    ]
)
EXPIRIES = st.sampled_from(
    [
        *(None, None, timedelta(microseconds=1), timedelta(seconds=1)),
        *(timedelta(hours=2), timedelta(0), timedelta(seconds=-1)),
    ]
)

Outcome = tuple[str, Any]


def outcome(call: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", call())
    except InvalidInput as exc:
        return ("error", (InvalidInput, exc.field))
    except TenantStoreError as exc:
        return ("error", type(exc))


@dataclasses.dataclass
class Backend:
    name: str
    tenants: Any
    usage: Any


@pytest.fixture(scope="module")
def pg_urls(pg_url: str) -> Iterator[tuple[str, str, str]]:
    # Each PostgreSQL backend needs a database of its own: they would collide.
    from tenantstore import migrate
    from tests.pgserver import scratch_database

    with scratch_database() as second, scratch_database() as third:
        migrate.up(second)
        migrate.up(third)
        yield pg_url, second, third


def _get_by_key(backend: Backend, key: str) -> Any:
    return backend.tenants.get_by_api_key(key)


def _create(backend: Backend, tenant: Tenant) -> Any:
    return backend.tenants.create(tenant)


class Differential(RuleBasedStateMachine):
    def __init__(
        self,
        pool: ConnectionPool,
        apool: AsyncConnectionPool,
        cached_apool: AsyncConnectionPool,
        runner: asyncio.Runner,
        urls: tuple[str, str, str],
    ) -> None:
        super().__init__()
        for url in urls:
            truncate(url)
        self.clock = FakeClock()
        clock = self.clock
        memory = InMemoryTenantRepository(clock=clock, cipher=CIPHER)
        amemory = AsyncInMemoryTenantRepository(clock=clock, cipher=CIPHER)
        postgres = PostgresTenantRepository(pool, clock=clock, cipher=CIPHER)
        apostgres = AsyncPostgresTenantRepository(apool, clock=clock, cipher=CIPHER)
        memory_inner = InMemoryTenantRepository(clock=clock, cipher=CIPHER)
        cached_memory = CachedTenantRepository(memory_inner, clock=clock)
        cached_apostgres = AsyncCachedTenantRepository(
            AsyncPostgresTenantRepository(cached_apool, clock=clock, cipher=CIPHER),
            clock=clock,
        )
        self.backends = [
            Backend("memory", memory, InMemoryUsageRepository(memory)),
            Backend(
                "memory-async",
                Synced(amemory, runner),
                Synced(AsyncInMemoryUsageRepository(amemory), runner),
            ),
            Backend("postgres", postgres, PostgresUsageRepository(pool, clock=clock)),
            Backend(
                "postgres-async",
                Synced(apostgres, runner),
                Synced(AsyncPostgresUsageRepository(apool, clock=clock), runner),
            ),
            # The caches (TTLs on the same fake clock, so `tick` expires entries).
            Backend(
                "cached(memory)", cached_memory, InMemoryUsageRepository(memory_inner)
            ),
            Backend(
                "cached-async(postgres-async)",
                Synced(cached_apostgres, runner),
                Synced(AsyncPostgresUsageRepository(cached_apool, clock=clock), runner),
            ),
        ]
        self.known: dict[str, Tenant] = {}
        self.history: list[Tenant] = []  # every version seen, for stale updates
        # Instants that occur in the stores, so `since` hits them exactly.
        self.times: list[datetime] = [self.clock.now()]

    def agree(self, op: Callable[[Backend], Any]) -> Outcome:
        results = [(b.name, outcome(functools.partial(op, b))) for b in self.backends]
        first_name, first = results[0]
        for name, result in results[1:]:
            assert result == first, (
                f"{name} disagrees with {first_name}:\n{result}\n{first}"
            )
        return first

    @initialize(
        seeds=st.lists(st.tuples(s.ids, s.keys), max_size=4, unique_by=lambda p: p[0])
    )
    def start(self, seeds: list[tuple[str, str]]) -> None:
        assert self.agree(lambda b: b.tenants.list()) == ("ok", [])
        for tenant_id, key in seeds:
            tenant = Tenant(id=tenant_id, name="seed", api_key_hash=hash_api_key(key))
            kind, value = self.agree(functools.partial(_create, tenant=tenant))
            if kind == "ok":
                self.known[value.id] = value

    @precondition(lambda self: bool(self.known))
    @rule(data=st.data())
    def get_known_key(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(s.KEYS))
        tenant_id = data.draw(st.sampled_from(sorted(self.known)))
        self.agree(lambda b: b.tenants.get_by_api_key(key))
        self.agree(
            lambda b: b.tenants.get_by_api_key_hash(self.known[tenant_id].api_key_hash)
        )
        self.agree(lambda b: b.tenants.get_by_id(tenant_id))

    @precondition(lambda self: bool(self.known))
    @rule(data=st.data(), request_id=s.request_ids, cost=s.valid_money)
    def record_known(self, data: st.DataObject, request_id: str, cost: Any) -> None:
        tenant_id = data.draw(st.sampled_from(sorted(self.known)))
        timestamp = data.draw(st.one_of(st.none(), st.sampled_from(self.times)))
        record = UsageRecord(
            tenant_id=tenant_id,
            request_id=request_id,
            model="gpt-4o",
            provider="openai",
            cost_usd=cost,
            timestamp=timestamp,
        )
        self.agree(lambda b: b.usage.record(record))
        since = data.draw(st.sampled_from(self.times))
        self.agree(lambda b: b.usage.get_tenant_usage(tenant_id, since))
        self.agree(lambda b: b.usage.get_tenant_total_cost(tenant_id, since))

    @rule(seconds=st.sampled_from([0, 0, 0.000001, 1, 3600, 86400]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.times.append(self.clock.now())

    def since(self, data: st.DataObject) -> datetime:
        return data.draw(st.one_of(st.sampled_from(self.times), s.maybe_naive))

    @rule(
        tenant_id=s.ids,
        key=s.keys,
        name=s.valid_names,
        budget=s.valid_money,
        rpm=s.valid_counts,
        models=s.valid_models,
        provider=st.one_of(st.none(), s.valid_provider),
        fallbacks=s.valid_providers,
        enabled=st.one_of(st.just(True), st.booleans()),
        pass_key=st.booleans(),
        expires_in=EXPIRIES,
        corrupt=s.corruption(TENANT_FIELDS),
    )
    def create(
        self,
        tenant_id: str,
        key: str,
        name: str,
        budget: Any,
        rpm: int,
        models: list[str],
        provider: str | None,
        fallbacks: list[str],
        enabled: bool,
        pass_key: bool,
        expires_in: timedelta | None,
        corrupt: tuple[str, object] | None,
    ) -> None:
        fields: dict[str, Any] = {
            "api_key_expires_at": self.expiry(expires_in),
            "id": tenant_id,
            "name": name,
            "api_key_hash": hash_api_key(key),
            "budget_usd": budget,
            "rate_limit_rpm": rpm,
            "allowed_models": models,
            "default_provider": provider,
            "fallback_providers": fallbacks,
            "enabled": enabled,
        }
        if corrupt is not None:
            fields[corrupt[0]] = corrupt[1]
        tenant = Tenant(**fields)
        api_key = key if pass_key else None
        kind, value = self.agree(lambda b: b.tenants.create(tenant, api_key=api_key))
        if kind == "ok":
            self.known[value.id] = value

    @precondition(lambda self: bool(self.known))
    @rule(
        data=st.data(),
        key=s.keys,
        change_key=st.booleans(),
        pass_key=st.booleans(),
        enabled=st.booleans(),
        budget=s.valid_money,
        models=s.valid_models,
        name=s.valid_names,
        corrupt=s.corruption(TENANT_FIELDS),
    )
    def update(
        self,
        data: st.DataObject,
        key: str,
        change_key: bool,
        pass_key: bool,
        enabled: bool,
        budget: Any,
        models: list[str],
        name: str,
        corrupt: tuple[str, object] | None,
    ) -> None:
        current = self.known[data.draw(st.sampled_from(sorted(self.known)))]
        changed = dataclasses.replace(
            current,
            name=name,
            enabled=enabled,
            budget_usd=budget,
            allowed_models=tuple(models),
            api_key_hash=hash_api_key(key) if change_key else current.api_key_hash,
        )
        if corrupt is not None:
            bad: dict[str, Any] = {corrupt[0]: corrupt[1]}
            changed = dataclasses.replace(changed, **bad)
        api_key = key if pass_key and change_key else None
        kind, value = self.agree(lambda b: b.tenants.update(changed, api_key=api_key))
        if kind == "ok":
            self.history.append(current)
            self.known[value.id] = value

    def expiry(self, expires_in: timedelta | None) -> datetime | None:
        return None if expires_in is None else self.clock.now() + expires_in

    @rule(
        data=st.data(),
        tenant_id=s.some_ids,
        key=s.keys,
        grace=GRACES,
        expires_in=EXPIRIES,
        repeat=st.booleans(),
    )
    def rotate_api_key(
        self,
        data: st.DataObject,
        tenant_id: str,
        key: str,
        grace: Any,
        expires_in: timedelta | None,
        repeat: bool,
    ) -> None:
        if self.known:
            pick: bool = data.draw(st.booleans())
            if pick:
                tenant_id = data.draw(st.sampled_from(sorted(self.known)))
        expires_at = self.expiry(expires_in)

        def rotate(b: Backend) -> Any:
            return b.tenants.rotate_api_key(
                tenant_id, key, grace=grace, expires_at=expires_at
            )

        before = self.known.get(tenant_id) if isinstance(tenant_id, str) else None
        kind, value = self.agree(rotate)
        if kind != "ok":
            return
        assert before is not None
        if before.api_key_hash == hash_api_key(key):
            assert value == before  # a retried rotation changes nothing
        else:
            assert value.api_key_hash == hash_api_key(key)
            assert value.api_key_prefix == key[:8]
            self.history.append(before)
        self.known[value.id] = value
        if repeat:  # the client retries: nothing more is revoked
            assert self.agree(rotate) == ("ok", value)
        self.agree(lambda b: b.tenants.get_by_api_key(key))
        self.agree(lambda b: b.tenants.reveal_api_key(tenant_id))

    @rule(tenant_id=s.some_ids, data=st.data())
    def revoke_previous_api_key(self, tenant_id: str, data: st.DataObject) -> None:
        if self.known:
            pick: bool = data.draw(st.booleans())
            if pick:
                tenant_id = data.draw(st.sampled_from(sorted(self.known)))
        kind, value = self.agree(lambda b: b.tenants.revoke_previous_api_key(tenant_id))
        if kind == "ok":
            assert value.previous_api_key_hash is None
            if value != self.known[value.id]:
                self.history.append(self.known[value.id])
            self.known[value.id] = value

    def all_keys(self) -> None:
        for key in s.KEYS:
            self.agree(functools.partial(_get_by_key, key=key))

    @precondition(lambda self: bool(self.known))
    @rule(
        data=st.data(),
        key=s.keys,
        grace=st.sampled_from([0, 1, 2, 1_000_000]),
        life=st.sampled_from([1, 2, 1_000_000, 3_600_000_000]),
    )
    def cross_expiry(
        self, data: st.DataObject, key: str, grace: int, life: int
    ) -> None:
        # Warm every cache with the old and new keys, then move the clock to each
        # instant a key ends (microseconds from now), looking every key up at it.
        tenant_id = data.draw(st.sampled_from(sorted(self.known)))
        start = self.clock.now()
        kind, value = self.agree(
            lambda b: b.tenants.rotate_api_key(
                tenant_id,
                key,
                grace=timedelta(microseconds=grace),
                expires_at=start + timedelta(microseconds=life),
            )
        )
        if kind == "ok":
            self.known[tenant_id] = value
        self.all_keys()
        self.all_keys()  # from the caches, where warm
        elapsed = 0
        for instant in sorted({grace, life} - {0}):
            if instant > 3_600_000_000:
                break
            self.tick((instant - elapsed) / 1_000_000)
            elapsed = instant
            self.all_keys()

    @precondition(lambda self: bool(self.known))
    @rule(data=st.data())
    def keys_of_known(self, data: st.DataObject) -> None:
        # Every key of the pool, and the previous hash itself, as the clock moves.
        tenant = self.known[data.draw(st.sampled_from(sorted(self.known)))]
        for key in s.KEYS:
            self.agree(functools.partial(_get_by_key, key=key))
        previous = tenant.previous_api_key_hash
        if previous is not None:
            self.agree(lambda b: b.tenants.get_by_api_key_hash(previous))

    @precondition(lambda self: bool(self.history))
    @rule(data=st.data(), enabled=st.booleans())
    def update_stale(self, data: st.DataObject, enabled: bool) -> None:
        old = data.draw(st.sampled_from(self.history))
        stale = dataclasses.replace(old, enabled=enabled)
        kind, value = self.agree(lambda b: b.tenants.update(stale))
        if kind == "ok":  # only when no other update happened to it since
            self.known[value.id] = value

    @rule(tenant_id=s.ids, name=s.valid_names)
    def update_unknown_or_any(self, tenant_id: str, name: str) -> None:
        tenant = Tenant(id=tenant_id, name=name, api_key_hash=hash_api_key("k"))
        kind, value = self.agree(lambda b: b.tenants.update(tenant))
        if kind == "ok":
            self.known[value.id] = value

    @rule(
        tenant_id=s.some_ids,
        enabled=st.one_of(st.booleans(), st.sampled_from([1, 0, "yes", None])),
    )
    def set_enabled(self, tenant_id: str, enabled: bool) -> None:
        before = self.known.get(tenant_id) if isinstance(tenant_id, str) else None
        kind, value = self.agree(lambda b: b.tenants.set_enabled(tenant_id, enabled))
        if kind == "ok":
            assert before is not None
            assert value == dataclasses.replace(
                before, enabled=enabled, updated_at=value.updated_at
            )
            self.history.append(before)  # a stale version for update_stale
            self.known[value.id] = value

    @rule(tenant_id=s.some_ids)
    def delete(self, tenant_id: str) -> None:
        if self.agree(lambda b: b.tenants.delete(tenant_id))[0] == "ok":
            del self.known[tenant_id]

    @rule(key=s.some_keys)
    def get_by_api_key(self, key: str) -> None:
        self.agree(lambda b: b.tenants.get_by_api_key(key))

    @rule(key=s.some_keys, hashed=st.booleans())
    def get_by_api_key_hash(self, key: str, hashed: bool) -> None:
        printable = isinstance(key, str) and key.isprintable()
        value = hash_api_key(key) if hashed and printable else key
        self.agree(lambda b: b.tenants.get_by_api_key_hash(value))

    @rule(tenant_id=s.some_ids)
    def get_by_id(self, tenant_id: str) -> None:
        self.agree(lambda b: b.tenants.get_by_id(tenant_id))

    @rule(tenant_id=s.some_ids)
    def reveal_api_key(self, tenant_id: str) -> None:
        self.agree(lambda b: b.tenants.reveal_api_key(tenant_id))

    @rule()
    def list_all(self) -> None:
        kind, value = self.agree(lambda b: b.tenants.list())
        assert kind == "ok"
        assert sorted(t.id for t in value) == sorted(self.known)

    @rule(
        tenant_id=s.some_ids,
        request_id=s.request_ids,
        model=st.sampled_from(["gpt-4o", "claude", "ü" * 255]),
        provider=s.valid_provider,
        tokens=s.valid_counts,
        cost=s.valid_money,
        cached=st.booleans(),
        status=s.valid_status,
        timestamp=st.one_of(st.none(), s.instants),
        corrupt=s.corruption(USAGE_FIELDS),
    )
    def record(
        self,
        tenant_id: str,
        request_id: str,
        model: str,
        provider: str,
        tokens: int,
        cost: Any,
        cached: bool,
        status: str,
        timestamp: datetime | None,
        corrupt: tuple[str, object] | None,
    ) -> None:
        fields: dict[str, Any] = {
            "tenant_id": tenant_id,
            "request_id": request_id,
            "model": model,
            "provider": provider,
            "input_tokens": tokens,
            "output_tokens": 7,
            "cost_usd": cost,
            "cached": cached,
            "latency_ms": 12,
            "status": status,
            "timestamp": timestamp,
        }
        if corrupt is not None:
            fields[corrupt[0]] = corrupt[1]
        record = UsageRecord(**fields)
        self.agree(lambda b: b.usage.record(record))
        if timestamp is not None:
            self.times.append(timestamp)

    @rule(tenant_id=s.some_ids, data=st.data())
    def usage(self, tenant_id: str, data: st.DataObject) -> None:
        since = self.since(data)
        kind, value = self.agree(lambda b: b.usage.get_tenant_usage(tenant_id, since))
        if kind == "ok":
            assert all(r.timestamp >= since for r in value)

    @rule(tenant_id=s.some_ids, data=st.data())
    def total_cost(self, tenant_id: str, data: st.DataObject) -> None:
        since = self.since(data)
        kind, value = self.agree(
            lambda b: b.usage.get_tenant_total_cost(tenant_id, since)
        )
        if kind == "ok":
            assert isinstance(value, Decimal)
            records = self.backends[0].usage.get_tenant_usage(tenant_id, since)
            assert value == sum((r.cost_usd for r in records), Decimal(0))


def test_backends_agree(pg_urls: tuple[str, str, str], runner: asyncio.Runner) -> None:
    with create_pool(pg_urls[0], min_size=1, max_size=2) as pool:
        apool = runner.run(create_async_pool(pg_urls[1], min_size=1, max_size=2))
        cached_apool = runner.run(create_async_pool(pg_urls[2], min_size=1, max_size=2))
        try:

            class Bound(Differential):
                def __init__(self) -> None:
                    super().__init__(pool, apool, cached_apool, runner, pg_urls)

            run_state_machine_as_test(Bound, settings=settings())
        finally:
            runner.run(apool.close())
            runner.run(cached_apool.close())
