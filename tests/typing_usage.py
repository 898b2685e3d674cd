"""A typical program using tenantstore, as its users write it; `mypy --strict` must
accept it unchanged (tests/test_typing.py). Importing it runs nothing.

`in_memory_gateway` and `async_in_memory_gateway` also run in the tests; the
PostgreSQL functions are only type-checked (they need a database).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tenantstore import (
    AdminUser,
    AdminUserNotFound,
    AdminUserRepository,
    AsyncAdminUserRepository,
    AsyncInMemoryAdminUserRepository,
    AsyncInMemoryTenantRepository,
    AsyncInMemoryUsageRepository,
    AsyncPostgresAdminUserRepository,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    AsyncStore,
    AsyncTenantRepository,
    AsyncUsageRepository,
    AuditEvent,
    CipherError,
    Clock,
    Conflict,
    InMemoryAdminUserRepository,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    InvalidCredentials,
    InvalidInput,
    KeyCipher,
    PostgresAdminUserRepository,
    PostgresTenantRepository,
    PostgresUsageRepository,
    StaleVersion,
    Store,
    StoreHealth,
    StoreUnavailable,
    SystemClock,
    Tenant,
    TenantNotFound,
    TenantRepository,
    UsageRecord,
    UsageRepository,
    acting_as,
    create_async_pool,
    create_pool,
    generate_api_key,
    has_permission,
    hash_api_key,
    is_plausible_api_key,
)


class FixedClock:
    """A user's own clock: anything with `now()` and `monotonic()` is a Clock."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return 0.0


def provision(tenants: TenantRepository, name: str) -> tuple[Tenant, str]:
    """Create a tenant; the key is shown once and only its hash is stored."""
    api_key: str = generate_api_key()
    assert is_plausible_api_key(api_key)
    tenant = tenants.create(
        Tenant(
            name=name,
            api_key_hash=hash_api_key(api_key),
            budget_usd=Decimal("100.00"),
            rate_limit_rpm=600,
            allowed_models=("gpt-4o", "claude-3"),
            default_provider="openai",
            fallback_providers=("anthropic",),
        ),
        api_key=api_key,
    )
    return tenant, api_key


def authenticate(tenants: TenantRepository, api_key: str) -> Tenant | None:
    try:
        return tenants.get_by_api_key(api_key)
    except TenantNotFound:
        return None


def charge(
    usage: UsageRepository, tenant: Tenant, request_id: str, cost: Decimal
) -> bool:
    return usage.record(
        UsageRecord(
            tenant_id=tenant.id,
            request_id=request_id,
            model="gpt-4o",
            provider="openai",
            input_tokens=1200,
            output_tokens=300,
            cost_usd=cost,
            latency_ms=420,
        )
    )


def over_budget(usage: UsageRepository, tenant: Tenant, days: int = 30) -> bool:
    since = datetime.now(UTC) - timedelta(days=days)
    spent: Decimal = usage.get_tenant_total_cost(tenant.id, since)
    return spent > tenant.budget_usd


def in_memory_gateway() -> Decimal:
    """The whole request path on the in-memory backend; returns the total cost."""
    cipher = KeyCipher({"2026-11": KeyCipher.generate_key()})
    clock: Clock = SystemClock()
    store = InMemoryTenantRepository(clock=clock, cipher=cipher)
    tenants: TenantRepository = store
    usage: UsageRepository = InMemoryUsageRepository(store)

    tenant, api_key = provision(tenants, "Acme")
    found = authenticate(tenants, api_key)
    assert found is not None
    assert found.id == tenant.id
    assert authenticate(tenants, "tsk_forged") is None

    assert charge(usage, found, "req-1", Decimal("0.0125"))
    assert not charge(usage, found, "req-1", Decimal("0.0125"))  # idempotent
    assert charge(usage, found, "req-2", Decimal("0.5"))
    assert not over_budget(usage, found)

    since = datetime.now(UTC) - timedelta(hours=1)
    records: list[UsageRecord] = usage.get_tenant_usage(found.id, since)
    assert sorted(r.request_id for r in records) == ["req-1", "req-2"]
    total: Decimal = usage.get_tenant_total_cost(found.id, since)

    revealed: str | None = tenants.reveal_api_key(found.id)
    assert revealed == api_key

    disabled: Tenant = tenants.set_enabled(found.id, False)
    assert authenticate(tenants, api_key) is None
    assert tenants.get_by_id(disabled.id).enabled is False
    try:
        tenants.update(dataclasses.replace(found, name="Stale"))  # read before
    except StaleVersion as stale:
        conflict: Conflict = stale  # a Conflict too: old handlers keep working
        del conflict  # read again and reapply: what a caller does here
    else:
        raise AssertionError("a stale read overwrote a newer version")
    listed: list[Tenant] = tenants.list()
    assert len(listed) == 1

    try:
        tenants.create(Tenant(name=" ", api_key_hash=hash_api_key(generate_api_key())))
    except InvalidInput as error:
        field: str = error.field
        assert field == "name"
    else:
        raise AssertionError("a blank name was accepted")

    try:
        tenants.create(dataclasses.replace(found, name="Copy"))
    except Conflict:
        pass
    else:
        raise AssertionError("a duplicate id was accepted")

    try:
        cipher.decrypt(b"\x01\x00" + bytes(28), tenant_id=found.id)
    except CipherError:
        pass
    else:
        raise AssertionError("garbage decrypted")

    tenants.delete(found.id)
    try:
        tenants.get_by_id(found.id)
    except TenantNotFound:
        return total
    raise AssertionError("a deleted tenant was found")


async def async_in_memory_gateway() -> Decimal:
    store = AsyncInMemoryTenantRepository(
        clock=FixedClock(datetime(2026, 11, 1, tzinfo=UTC))
    )
    tenants: AsyncTenantRepository = store
    usage: AsyncUsageRepository = AsyncInMemoryUsageRepository(store)
    api_key = generate_api_key()
    tenant = await tenants.create(
        Tenant(name="Acme", api_key_hash=hash_api_key(api_key))
    )
    found = await tenants.get_by_api_key(api_key)
    enabled: Tenant = await tenants.set_enabled(found.id, True)
    assert enabled.enabled
    recorded: bool = await usage.record(
        UsageRecord(
            tenant_id=found.id,
            request_id="r",
            model="m",
            provider="p",
            cost_usd=Decimal("1.25"),
        )
    )
    assert recorded
    since = datetime(2026, 1, 1, tzinfo=UTC)
    return await usage.get_tenant_total_cost(tenant.id, since)


def postgres_repositories(conninfo: str) -> tuple[TenantRepository, UsageRepository]:
    """What a gateway builds at start-up (needs a database: type-checked only)."""
    pool = create_pool(conninfo)
    cipher = KeyCipher.from_env(os.environ["TENANTSTORE_KEY_RING"])
    tenants = PostgresTenantRepository(pool, clock=SystemClock(), cipher=cipher)
    usage = PostgresUsageRepository(pool)
    return tenants, usage


def postgres_lookup(tenants: PostgresTenantRepository, api_key: str) -> Tenant | None:
    try:
        return tenants.get_by_api_key(api_key)
    except TenantNotFound:
        return None
    except StoreUnavailable as error:
        cause: BaseException | None = error.__cause__
        raise RuntimeError("tenant store down") from cause


async def async_postgres_repositories(
    conninfo: str,
) -> tuple[AsyncTenantRepository, AsyncUsageRepository]:
    pool = await create_async_pool(conninfo, max_size=10)
    tenants = AsyncPostgresTenantRepository(pool)
    usage = AsyncPostgresUsageRepository(pool, clock=SystemClock())
    return tenants, usage


def admin_login(admins: AdminUserRepository, username: str, password: str) -> bool:
    """An admin API's Basic-auth check, with the Go service's permission table."""
    try:
        user: AdminUser = admins.authenticate(username, password)
    except InvalidCredentials:
        return False
    return has_permission(user.role, "tenant:write")


def operators() -> list[str]:
    """Admin users and the audit log, in memory; returns the actions logged."""
    tenants = InMemoryTenantRepository(actor="setup")
    admins: AdminUserRepository = InMemoryAdminUserRepository(tenants, actor="setup")
    alice = admins.create("alice", "correct horse", role="editor")
    assert admin_login(admins, "alice", "correct horse")
    assert not admin_login(admins, "alice", "wrong")
    with acting_as("alice"):
        admins.update(dataclasses.replace(alice, enabled=False))
    try:
        admins.get_by_username("nobody")
    except AdminUserNotFound as missing:
        lookup_error: LookupError = missing  # handlers for LookupError catch it
        del lookup_error
    events: list[AuditEvent] = tenants.list_audit(limit=10)
    actors: list[str | None] = [e.actor for e in events]
    assert actors == ["alice", "setup"]
    return [e.action for e in events]


async def async_operators(admins: AsyncAdminUserRepository) -> AdminUser:
    user = await admins.create("bob", "battery staple")
    return await admins.set_password(user.id, "another one")


def postgres_admins(conninfo: str) -> AdminUserRepository:
    """Type-checked only: the PostgreSQL admin repository fits the protocol."""
    return PostgresAdminUserRepository(create_pool(conninfo), actor="admin-api")


async def async_postgres_admins(conninfo: str) -> AsyncAdminUserRepository:
    pool = await create_async_pool(conninfo)
    memory: AsyncAdminUserRepository = AsyncInMemoryAdminUserRepository()
    del memory
    return AsyncPostgresAdminUserRepository(pool)


def store_gateway(conninfo: str, api_key: str) -> bool:
    """Type-checked only: `Store.open` is the store, a context manager."""
    with Store.open(conninfo, writer={"max_delay": 0.01}) as store:
        tenant: Tenant = store.tenants.get_by_api_key(api_key)
        if store.writer is not None:
            store.writer.submit(
                UsageRecord(
                    tenant_id=tenant.id, request_id="r", model="m", provider="p"
                )
            )
        health: StoreHealth = store.health()
        return health.ok


async def async_store_gateway(conninfo: str, api_key: str) -> bool:
    """Type-checked only: `AsyncStore.open` is awaited, or entered."""
    store: AsyncStore = await AsyncStore.open(conninfo, cache={"ttl": 60})
    async with store:
        await store.tenants.get_by_api_key(api_key)
    async with AsyncStore.open(conninfo) as entered:
        health: StoreHealth = await entered.health()
    memory: AsyncStore = AsyncStore.memory()
    await memory.close()
    return health.ok
