"""One contract, every backend: in memory and PostgreSQL, sync and async.

Each test runs against each backend through the `backend` fixture; the state
machine in test_differential.py checks that they agree, these check that what
they agree on is right.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tenantstore import (
    AsyncInMemoryTenantRepository,
    AsyncInMemoryUsageRepository,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    CipherError,
    Conflict,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    InvalidInput,
    KeyCipher,
    PostgresTenantRepository,
    PostgresUsageRepository,
    StaleVersion,
    Tenant,
    TenantNotFound,
    UsageRecord,
    generate_api_key,
    hash_api_key,
)
from tests.fix_backends import FakeClock, Synced
from tests.strategies import HOSTILE_TEXT

CIPHER = KeyCipher({"k1": bytes(range(32, 64)), "k0": bytes(range(32))})
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclasses.dataclass
class Stores:
    tenants: Any
    usage: Any
    clock: FakeClock
    url: str | None


@pytest.fixture(params=["memory", "memory-async", "postgres", "postgres-async"])
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    clock = FakeClock(T0)
    kind = request.param
    if kind == "memory":
        tenants = InMemoryTenantRepository(clock=clock, cipher=CIPHER)
        yield Stores(tenants, InMemoryUsageRepository(tenants), clock, None)
    elif kind == "memory-async":
        runner: asyncio.Runner = request.getfixturevalue("runner")
        atenants = AsyncInMemoryTenantRepository(clock=clock, cipher=CIPHER)
        yield Stores(
            Synced(atenants, runner),
            Synced(AsyncInMemoryUsageRepository(atenants), runner),
            clock,
            None,
        )
    elif kind == "postgres":
        pool: ConnectionPool = request.getfixturevalue("pool")
        yield Stores(
            PostgresTenantRepository(pool, clock=clock, cipher=CIPHER),
            PostgresUsageRepository(pool, clock=clock),
            clock,
            request.getfixturevalue("clean_db"),
        )
    else:
        runner = request.getfixturevalue("runner")
        apool: AsyncConnectionPool = request.getfixturevalue("apool")
        yield Stores(
            Synced(
                AsyncPostgresTenantRepository(apool, clock=clock, cipher=CIPHER), runner
            ),
            Synced(AsyncPostgresUsageRepository(apool, clock=clock), runner),
            clock,
            request.getfixturevalue("clean_db"),
        )


def new_tenant(**changes: Any) -> tuple[Tenant, str]:
    key = generate_api_key()
    fields: dict[str, Any] = {
        "name": "Acme",
        "api_key_hash": hash_api_key(key),
        "budget_usd": Decimal("100.00"),
        "rate_limit_rpm": 600,
        "allowed_models": ("gpt-4o", "claude-3"),
        "default_provider": "openai",
        "fallback_providers": ("anthropic", "azure"),
    }
    fields.update(changes)
    return Tenant(**fields), key


def usage(tenant_id: str, request_id: str = "r1", **changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "request_id": request_id,
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_usd": Decimal("0.0000001"),
        "cached": True,
        "latency_ms": 250,
        "status": "error",
        "timestamp": T0,
    }
    fields.update(changes)
    return UsageRecord(**fields)


def test_create_round_trips_every_field(stores: Stores) -> None:
    tenant, key = new_tenant(budget_usd="12.345")
    created = stores.tenants.create(tenant)
    assert created.budget_usd == Decimal("12.34")  # ROUND_HALF_EVEN
    assert created.created_at == created.updated_at == T0
    assert stores.tenants.get_by_id(tenant.id) == created
    assert stores.tenants.get_by_api_key(key) == created
    assert stores.tenants.get_by_api_key_hash(tenant.api_key_hash) == created
    assert created.allowed_models == ("gpt-4o", "claude-3")
    assert created.fallback_providers == ("anthropic", "azure")


def test_disabled_tenant_does_not_authenticate_but_is_found_by_id(
    stores: Stores,
) -> None:
    tenant, key = new_tenant(enabled=False)
    stores.tenants.create(tenant)
    with pytest.raises(TenantNotFound):
        stores.tenants.get_by_api_key(key)
    with pytest.raises(TenantNotFound):
        stores.tenants.get_by_api_key_hash(tenant.api_key_hash)
    assert stores.tenants.get_by_id(tenant.id).enabled is False


def test_update_keeps_created_at_and_moves_updated_at(stores: Stores) -> None:
    tenant, key = new_tenant()
    created = stores.tenants.create(tenant)
    new_key = generate_api_key()
    # The clock did not move: updated_at still moves, by one microsecond.
    updated = stores.tenants.update(
        dataclasses.replace(created, api_key_hash=hash_api_key(new_key), name="B")
    )
    assert updated.created_at == created.created_at
    assert updated.updated_at == created.updated_at + timedelta(microseconds=1)
    stores.clock.advance(60)
    again = stores.tenants.update(updated)
    assert again.updated_at == T0 + timedelta(seconds=60)
    with pytest.raises(TenantNotFound):
        stores.tenants.get_by_api_key(key)
    assert stores.tenants.get_by_api_key(new_key).name == "B"


def test_update_unknown_and_key_clash(stores: Stores) -> None:
    a, _ = new_tenant()
    b, _ = new_tenant()
    stores.tenants.create(a)
    with pytest.raises(TenantNotFound):
        stores.tenants.update(b)
    stores.tenants.create(b)
    with pytest.raises(Conflict) as clash:
        stores.tenants.update(dataclasses.replace(b, api_key_hash=a.api_key_hash))
    assert not isinstance(clash.value, StaleVersion)  # retrying cannot help
    assert stores.tenants.get_by_id(b.id).api_key_hash == b.api_key_hash


def test_create_conflicts(stores: Stores) -> None:
    a, _ = new_tenant()
    stores.tenants.create(a)
    with pytest.raises(Conflict) as duplicate_id:
        stores.tenants.create(dataclasses.replace(a, api_key_hash=hash_api_key("x")))
    with pytest.raises(Conflict) as duplicate_hash:
        stores.tenants.create(new_tenant(api_key_hash=a.api_key_hash)[0])
    assert not isinstance(duplicate_id.value, StaleVersion)
    assert not isinstance(duplicate_hash.value, StaleVersion)
    assert len(stores.tenants.list()) == 1


def test_list_order_newest_first_then_id(stores: Stores) -> None:
    ids = ["00000000-0000-4000-8000-00000000000" + c for c in "3a1"]
    for tenant_id in ids:
        stores.tenants.create(new_tenant(id=tenant_id)[0])
    stores.clock.advance(1)
    newest = stores.tenants.create(new_tenant()[0])
    listed = [t.id for t in stores.tenants.list()]
    assert listed == [newest.id, *sorted(ids)]


def test_delete_cascades_usage(stores: Stores) -> None:
    tenant, _key = new_tenant()
    stores.tenants.create(tenant)
    assert stores.usage.record(usage(tenant.id)) is True
    stores.tenants.delete(tenant.id)
    with pytest.raises(TenantNotFound):
        stores.tenants.delete(tenant.id)
    assert stores.usage.get_tenant_usage(tenant.id, T0) == []
    assert stores.usage.get_tenant_total_cost(tenant.id, T0) == Decimal("0")
    with pytest.raises(TenantNotFound):
        stores.usage.record(usage(tenant.id, "r2"))
    if stores.url is not None:
        with psycopg.connect(stores.url) as conn:
            row = conn.execute("SELECT count(*) FROM usage_records").fetchone()
        assert row == (0,)


def test_record_is_idempotent_and_round_trips(stores: Stores) -> None:
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    first = usage(tenant.id, timestamp=T0.astimezone(timezone(timedelta(hours=5))))
    assert stores.usage.record(first) is True
    assert stores.usage.record(dataclasses.replace(first, cost_usd=Decimal(5))) is False
    (stored,) = stores.usage.get_tenant_usage(tenant.id, T0)
    assert stored == dataclasses.replace(first, timestamp=T0)
    assert stored.timestamp is not None
    assert stored.timestamp.tzinfo is UTC
    assert stores.usage.get_tenant_total_cost(tenant.id, T0) == Decimal("0.0000001")


def test_record_without_timestamp_takes_the_clock(stores: Stores) -> None:
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    stores.usage.record(usage(tenant.id, timestamp=None))
    (stored,) = stores.usage.get_tenant_usage(tenant.id, T0)
    assert stored.timestamp == T0


def test_since_is_inclusive_and_order_is_by_time_then_code_point(
    stores: Stores,
) -> None:
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    for request_id in ["b", "B", "a", "é", "Z"]:
        stores.usage.record(usage(tenant.id, request_id, cost_usd="0.1"))
    stores.usage.record(usage(tenant.id, "later", timestamp=T0 + timedelta(seconds=1)))
    stores.usage.record(
        usage(tenant.id, "earlier", timestamp=T0 - timedelta(microseconds=1))
    )
    got = [r.request_id for r in stores.usage.get_tenant_usage(tenant.id, T0)]
    assert got == ["later", "B", "Z", "a", "b", "é"]
    total = stores.usage.get_tenant_total_cost(tenant.id, T0)
    assert total == Decimal("0.5000001")


def test_tiny_costs_are_not_lost(stores: Stores) -> None:
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    for i in range(3):
        stores.usage.record(usage(tenant.id, f"r{i}", cost_usd=Decimal("0.00000015")))
    # decimal(10,6) would have rounded each to 0.000000.
    assert stores.usage.get_tenant_total_cost(tenant.id, T0) == Decimal("0.00000045")


@pytest.mark.parametrize("odd", [*HOSTILE_TEXT, "0" * 64, "not-a-uuid"])
def test_odd_lookups_are_simply_not_found(stores: Stores, odd: str) -> None:
    stores.tenants.create(new_tenant()[0])
    for lookup in (
        stores.tenants.get_by_api_key,
        stores.tenants.get_by_api_key_hash,
        stores.tenants.get_by_id,
        stores.tenants.delete,
        stores.tenants.reveal_api_key,
    ):
        with pytest.raises(TenantNotFound):
            lookup(odd)
    assert stores.usage.get_tenant_usage(odd, T0) == []
    assert stores.usage.get_tenant_total_cost(odd, T0) == Decimal("0")


SQL_SHAPED = "Robert'); DROP TABLE tenants; -- %s %(x)s $1 \\ \" ' ;"


def test_sql_shaped_strings_are_stored_verbatim(stores: Stores) -> None:
    tenant, key = new_tenant(
        name=SQL_SHAPED,
        allowed_models=(SQL_SHAPED, "{a,b}", "NULL"),
        default_provider="';--",
    )
    stores.tenants.create(tenant)
    got = stores.tenants.get_by_api_key(key)
    assert got.name == SQL_SHAPED
    assert got.allowed_models == (SQL_SHAPED, "{a,b}", "NULL")
    assert got.default_provider == "';--"
    stores.usage.record(usage(tenant.id, SQL_SHAPED[:255], model=SQL_SHAPED))
    (record,) = stores.usage.get_tenant_usage(tenant.id, T0)
    assert record.request_id == SQL_SHAPED
    assert record.model == SQL_SHAPED


BAD_TENANT_FIELDS: list[tuple[str, Any]] = [
    ("id", "NOT-A-UUID"),
    ("id", "6F9619FF-8B86-D011-B42D-00CF4FC964FF"),
    ("name", ""),
    ("name", "   "),
    ("name", "x" * 256),
    ("name", "a\x00b"),
    ("name", "\ud800"),
    ("name", 5),
    ("api_key_hash", "ABC"),
    ("api_key_hash", "A" * 64),
    ("budget_usd", Decimal("-0.01")),
    ("budget_usd", Decimal("NaN")),
    ("budget_usd", float("inf")),
    ("budget_usd", Decimal("100000000")),
    ("budget_usd", "lots"),
    ("budget_usd", True),
    ("rate_limit_rpm", -1),
    ("rate_limit_rpm", 2**31),
    ("rate_limit_rpm", True),
    ("rate_limit_rpm", 1.0),
    ("allowed_models", "gpt-4o"),
    ("allowed_models", ("ok", "")),
    ("allowed_models", ("ok", 3)),
    ("default_provider", "x" * 51),
    ("fallback_providers", ("a\x00",)),
    ("enabled", 1),
]


@pytest.mark.parametrize(("field", "value"), BAD_TENANT_FIELDS)
def test_bad_tenant_field_is_named_and_nothing_written(
    stores: Stores, field: str, value: Any
) -> None:
    tenant, _ = new_tenant()
    bad = dataclasses.replace(tenant, **{field: value})
    with pytest.raises(InvalidInput) as info:
        stores.tenants.create(bad)
    assert info.value.field.split("[")[0] == field
    assert isinstance(info.value, ValueError)
    assert stores.tenants.list() == []
    stores.tenants.create(tenant)
    with pytest.raises(InvalidInput):
        stores.tenants.update(
            dataclasses.replace(bad, id=tenant.id) if field != "id" else bad
        )
    assert stores.tenants.get_by_id(tenant.id) == stores.tenants.list()[0]
    assert stores.tenants.get_by_id(tenant.id).name == tenant.name


BAD_USAGE_FIELDS: list[tuple[str, Any]] = [
    ("tenant_id", "nope"),
    ("request_id", ""),
    ("request_id", "r" * 256),
    ("model", "m" * 256),
    ("model", "\x00"),
    ("provider", "p" * 51),
    ("input_tokens", -1),
    ("output_tokens", 2**31),
    ("latency_ms", False),
    ("cost_usd", Decimal("-1")),
    ("cost_usd", Decimal("1E+10")),
    ("cost_usd", float("nan")),
    ("cached", "yes"),
    ("status", "s" * 21),
    ("timestamp", datetime(2026, 1, 1)),
    ("timestamp", "2026-01-01"),
]


@pytest.mark.parametrize(("field", "value"), BAD_USAGE_FIELDS)
def test_bad_usage_field_is_named_and_nothing_written(
    stores: Stores, field: str, value: Any
) -> None:
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    with pytest.raises(InvalidInput) as info:
        stores.usage.record(dataclasses.replace(usage(tenant.id), **{field: value}))
    assert info.value.field == field
    assert (
        stores.usage.get_tenant_usage(tenant.id, datetime.min.replace(tzinfo=UTC)) == []
    )


def test_naive_since_is_invalid(stores: Stores) -> None:
    with pytest.raises(InvalidInput) as info:
        stores.usage.get_tenant_usage(new_tenant()[0].id, datetime(2026, 1, 1))
    assert info.value.field == "since"


def test_cipher_stores_reveals_and_binds_to_the_tenant(stores: Stores) -> None:
    a, key_a = new_tenant()
    b, key_b = new_tenant()
    stores.tenants.create(a, api_key=key_a)
    stores.tenants.create(b)
    assert stores.tenants.reveal_api_key(a.id) == key_a
    assert stores.tenants.reveal_api_key(b.id) is None
    with pytest.raises(InvalidInput) as info:
        stores.tenants.update(b, api_key=key_a)
    assert info.value.field == "api_key"
    # Rotating the key without giving it drops the now meaningless ciphertext.
    rotated = stores.tenants.update(
        dataclasses.replace(a, api_key_hash=hash_api_key("k2"))
    )
    assert stores.tenants.reveal_api_key(rotated.id) is None
    stores.tenants.update(
        dataclasses.replace(b, api_key_hash=hash_api_key(key_b)), api_key=key_b
    )
    assert stores.tenants.reveal_api_key(b.id) == key_b


def test_ciphertext_moved_to_another_tenant_fails(
    pool: ConnectionPool, clean_db: str
) -> None:
    repo = PostgresTenantRepository(pool, cipher=CIPHER)
    a, key_a = new_tenant()
    b, key_b = new_tenant()
    repo.create(a, api_key=key_a)
    repo.create(b, api_key=key_b)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenants SET api_key_encrypted ="
            " (SELECT api_key_encrypted FROM tenants WHERE id = %s) WHERE id = %s",
            (a.id, b.id),
        )
    with pytest.raises(CipherError) as info:
        repo.reveal_api_key(b.id)
    assert key_a not in str(info.value)
    assert key_b not in str(info.value)
    assert repo.reveal_api_key(a.id) == key_a


def test_update_of_a_stale_read_is_a_conflict(stores: Stores) -> None:
    tenant, key = new_tenant()
    read_by_one = stores.tenants.create(tenant)
    read_by_two = stores.tenants.get_by_id(tenant.id)
    rotated = stores.tenants.update(
        dataclasses.replace(read_by_one, api_key_hash=hash_api_key("rotated"))
    )
    # The second writer read before the rotation: its write must not bring the
    # old key back. StaleVersion (a Conflict) tells it to read again and retry.
    with pytest.raises(StaleVersion):
        stores.tenants.update(dataclasses.replace(read_by_two, enabled=False))
    assert stores.tenants.get_by_id(tenant.id) == rotated
    with pytest.raises(TenantNotFound):
        stores.tenants.get_by_api_key(key)
    # Reading again and reapplying works; a tenant built afresh overwrites.
    disabled = stores.tenants.update(dataclasses.replace(rotated, enabled=False))
    assert disabled.enabled is False
    assert (
        stores.tenants.update(dataclasses.replace(tenant, name="Fresh")).name == "Fresh"
    )
    stores.tenants.delete(tenant.id)
    with pytest.raises(TenantNotFound):
        stores.tenants.update(disabled)


def test_set_enabled_changes_enabled_and_the_version_only(stores: Stores) -> None:
    tenant, key = new_tenant()
    created = stores.tenants.create(tenant, api_key=key)
    disabled = stores.tenants.set_enabled(tenant.id, False)
    # Within one clock tick updated_at still moves, as update's does.
    assert disabled.updated_at == T0 + timedelta(microseconds=1)
    assert disabled == dataclasses.replace(
        created, enabled=False, updated_at=disabled.updated_at
    )
    assert stores.tenants.get_by_id(tenant.id) == disabled
    with pytest.raises(TenantNotFound):
        stores.tenants.get_by_api_key(key)
    with pytest.raises(TenantNotFound):
        stores.tenants.get_by_api_key_hash(tenant.api_key_hash)
    # Unconditional, and idempotent in effect; the version moves each time.
    again = stores.tenants.set_enabled(tenant.id, False)
    assert again.enabled is False
    assert again.updated_at is not None
    assert disabled.updated_at is not None
    assert again.updated_at > disabled.updated_at
    # A read from before it is stale now.
    with pytest.raises(StaleVersion):
        stores.tenants.update(dataclasses.replace(created, name="Lost"))
    stores.clock.advance(60)
    enabled = stores.tenants.set_enabled(tenant.id, True)
    assert enabled.updated_at == T0 + timedelta(seconds=60)
    assert enabled.created_at == T0
    assert stores.tenants.get_by_api_key(key) == enabled
    # The stored copy of the key is kept: the key did not change.
    assert stores.tenants.reveal_api_key(tenant.id) == key


@pytest.mark.parametrize("enabled", [1, 0, "yes", None, "false"])
def test_set_enabled_takes_a_bool_only(stores: Stores, enabled: object) -> None:
    tenant, _ = new_tenant()
    created = stores.tenants.create(tenant)
    for tenant_id in (tenant.id, "not-an-id"):  # the value is checked first
        with pytest.raises(InvalidInput) as info:
            stores.tenants.set_enabled(tenant_id, enabled)
        assert info.value.field == "enabled"
    assert stores.tenants.get_by_id(tenant.id) == created


UNKNOWN_ID = "5f0c1e2a-3f3a-4c1e-9a57-2f4b1d6a9c10"


@pytest.mark.parametrize(
    "tenant_id",
    ["", "not-an-id", UNKNOWN_ID, UNKNOWN_ID.upper(), "\ud800", 5, None, ["x"], b"x"],
)
def test_set_enabled_of_an_unknown_or_malformed_id_is_not_found(
    stores: Stores, tenant_id: object
) -> None:
    tenant, _ = new_tenant()
    created = stores.tenants.create(tenant)
    with pytest.raises(TenantNotFound):
        stores.tenants.set_enabled(tenant_id, False)
    assert stores.tenants.get_by_id(tenant.id) == created


@pytest.mark.parametrize("tenant_id", [["x"], ("x",), 5, None, b"x", {"a": 1}, 1.5])
def test_usage_of_a_non_str_id_is_simply_none(stores: Stores, tenant_id: Any) -> None:
    """Item 10: no raw TypeError from the in-memory backend; [] and 0 on both."""
    tenant, _ = new_tenant()
    stores.tenants.create(tenant)
    stores.usage.record(usage(tenant.id))
    since = T0 - timedelta(days=1)
    assert stores.usage.get_tenant_usage(tenant_id, since) == []
    total = stores.usage.get_tenant_total_cost(tenant_id, since)
    assert total == Decimal("0")
    assert isinstance(total, Decimal)
    # Non-canonical spellings of a real id are nobody's id either.
    for spelling in (tenant.id.upper(), "{" + tenant.id + "}"):
        assert stores.usage.get_tenant_usage(spelling, since) == []
        assert stores.usage.get_tenant_total_cost(spelling, since) == Decimal("0")


def test_a_pool_of_the_callers_without_autocommit_works(clean_db: str) -> None:
    with ConnectionPool(clean_db, min_size=1, max_size=1) as own:
        tenants = PostgresTenantRepository(own)
        usage_repo = PostgresUsageRepository(own)
        tenant, key = new_tenant()
        tenants.create(tenant)
        assert tenants.get_by_api_key(key).id == tenant.id
        assert usage_repo.record(usage(tenant.id)) is True
        with pytest.raises(Conflict):
            tenants.create(tenant)
        # Each statement ran in its own committed transaction: nothing left open,
        # and another connection sees the writes.
        with own.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with psycopg.connect(clean_db) as other:
            count = other.execute("SELECT count(*) FROM usage_records").fetchone()
        assert count == (1,)
