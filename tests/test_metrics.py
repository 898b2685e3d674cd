"""`tenantstore.metrics`: real parts on PostgreSQL, scraped over HTTP and collected.

The Prometheus collector is registered on a registry served by prometheus_client's
own HTTP server on 127.0.0.1, scraped with urllib, and the exposition parsed with
prometheus_client's parser; the OpenTelemetry instruments are read by the SDK's
InMemoryMetricReader. The values asserted follow from what the test did.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import ConnectionPool

from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    AsyncUsageWriter,
    BudgetGuard,
    CachedTenantRepository,
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    TenantCacheListener,
    TenantNotFound,
    UsageRecord,
    UsageWriter,
    create_async_pool,
    generate_api_key,
    hash_api_key,
)
from tenantstore.metrics import (
    METRICS,
    TenantStoreCollector,
    instrument,
    instrument_store,
)
from tests.polling import wait_until

LOOKUPS = 5  # by one key: the first misses (and fills), the others hit
RECORDS = 3


def record(tenant_id: str, request_id: str, cost: str = "0.01") -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant_id,
        request_id=request_id,
        model="gpt-4o",
        provider="openai",
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal(cost),
    )


@dataclass
class Parts:
    pool: ConnectionPool
    cache: CachedTenantRepository
    listener: TenantCacheListener
    writer: UsageWriter
    budgets: BudgetGuard

    def kwargs(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "listener": self.listener,
            "pool": self.pool,
            "writer": self.writer,
            "budgets": self.budgets,
        }


@pytest.fixture
def parts(pool: ConnectionPool, clean_db: str) -> Iterator[Parts]:
    """Every part, real, after a known sequence of actions (see the asserts)."""
    tenants = PostgresTenantRepository(pool)
    usage = PostgresUsageRepository(pool)
    cache = CachedTenantRepository(tenants)
    key = generate_api_key()
    tenant = tenants.create(
        Tenant(name="metered", api_key_hash=hash_api_key(key), budget_usd=Decimal(10))
    )
    with (
        TenantCacheListener(clean_db, cache) as listener,
        UsageWriter(usage, max_delay=0.001) as writer,
        BudgetGuard(tenants, usage) as budgets,
    ):
        assert listener.wait_connected(60)
        # One change made elsewhere, applied by the listener before the lookups
        # (so that its invalidation cannot turn a hit into a miss).
        tenants.create(Tenant(name="other", api_key_hash=hash_api_key("x" * 40)))
        wait_until(lambda: listener.notifications == 1, "the change was applied")
        for _ in range(LOOKUPS):
            assert cache.get_by_api_key(key).id == tenant.id
        for i in range(RECORDS):
            writer.submit(record(tenant.id, f"r{i}"))
        writer.flush()
        reservation = budgets.reserve(tenant, Decimal("1"))
        assert reservation.settle(record(tenant.id, "settled", "0.5"))
        yield Parts(pool, cache, listener, writer, budgets)


def expected(parts: Parts) -> dict[str, float]:
    """What each Prometheus sample must read after `parts`' actions."""
    return {
        "tenantstore_cache_hits_total": LOOKUPS - 1,
        "tenantstore_cache_misses_total": 1,
        "tenantstore_cache_fills_total": 1,
        "tenantstore_cache_entries": 1,
        "tenantstore_cache_fills_in_flight": 0,
        "tenantstore_listener_connected": 1,
        "tenantstore_listener_notifications_total": 1,
        "tenantstore_listener_reconnects_total": 0,
        "tenantstore_listener_revalidations_total": 1,
        "tenantstore_pool_max_connections": 4,
        "tenantstore_pool_min_connections": 1,
        "tenantstore_pool_requests_waiting": 0,
        "tenantstore_writer_submitted_total": RECORDS,
        "tenantstore_writer_written_total": RECORDS,
        "tenantstore_writer_pending": 0,
        "tenantstore_writer_retries_total": 0,
        "tenantstore_budget_reserved_total": 1,
        "tenantstore_budget_settled_total": 1,
        "tenantstore_budget_refused_total": 0,
    }


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], float]:
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_scrape_over_http(parts: Parts) -> None:
    registry = CollectorRegistry()
    registry.register(TenantStoreCollector(**parts.kwargs()))
    samples = scrape(registry)
    for name, value in expected(parts).items():
        assert samples[(name, ())] == value, name
    # Every metric is exposed, the pool's connections by state.
    names = {name for name, _ in samples}
    assert {info.prometheus for info in METRICS} <= names
    idle = samples[("tenantstore_pool_connections", (("state", "idle"),))]
    used = samples[("tenantstore_pool_connections", (("state", "used"),))]
    assert idle + used == parts.pool.get_stats()["pool_size"] >= 1
    assert samples[("tenantstore_pool_requests_total", ())] >= 1
    # A scrape reads the parts now: more lookups, higher counts.
    with pytest.raises(TenantNotFound):  # unknown: a miss, then a negative entry
        parts.cache.get_by_api_key(generate_api_key())
    again = scrape(registry)
    assert again[("tenantstore_cache_misses_total", ())] == 2
    assert again[("tenantstore_cache_negative_entries", ())] == 1


def test_collector_for_store_takes_the_parts_it_has(parts: Parts) -> None:
    store = SimpleNamespace(
        tenants=parts.cache, listener=None, pool=parts.pool, writer=parts.writer
    )
    registry = CollectorRegistry()
    registry.register(TenantStoreCollector.for_store(store))
    samples = scrape(registry)
    names = {name for name, _ in samples}
    assert "tenantstore_cache_hits_total" in names
    assert "tenantstore_writer_written_total" in names
    assert not any(
        n.startswith(("tenantstore_listener", "tenantstore_budget")) for n in names
    )
    # A store whose tenants are not a cache (no stats()) exposes no cache metric.
    plain = SimpleNamespace(
        tenants=PostgresTenantRepository(parts.pool), pool=parts.pool
    )
    collector = TenantStoreCollector.for_store(plain)
    assert {f.name for f in collector.collect()} == {
        info.prometheus.removesuffix("_total")
        for info in METRICS
        if info.part == "pool"
    }


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def test_opentelemetry_instruments(parts: Parts) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instruments = instrument(provider, **parts.kwargs())
        assert len(instruments) == len(METRICS)
        points = otel_points(reader)
    finally:
        provider.shutdown()
    assert {info.opentelemetry for info in METRICS} <= set(points)
    by_name = {info.prometheus: info.opentelemetry for info in METRICS}
    for name, value in expected(parts).items():
        (point,) = points[by_name[name]]
        assert point.value == value, name
    # The pool follows the database client semantic conventions.
    pool_name = parts.pool.name
    states = {}
    for point in points["db.client.connection.count"]:
        attributes = dict(point.attributes)
        assert attributes["db.system.name"] == "postgresql"
        assert attributes["db.client.connection.pool.name"] == pool_name
        states[attributes["db.client.connection.state"]] = point.value
    assert set(states) == {"idle", "used"}
    assert sum(states.values()) == parts.pool.get_stats()["pool_size"]
    (maximum,) = points["db.client.connection.max"]
    assert maximum.value == 4
    (pending,) = points["db.client.connection.pending_requests"]
    assert pending.value == 0


def test_opentelemetry_for_async_parts_of_a_store(clean_db: str) -> None:
    async def main() -> dict[str, list[Any]]:
        pool = await create_async_pool(clean_db, min_size=1, max_size=2)
        try:
            tenants = AsyncPostgresTenantRepository(pool)
            cache = AsyncCachedTenantRepository(tenants)
            key = generate_api_key()
            await tenants.create(Tenant(name="a", api_key_hash=hash_api_key(key)))
            async with AsyncUsageWriter(AsyncPostgresUsageRepository(pool)) as writer:
                for _ in range(3):
                    await cache.get_by_api_key(key)
                store = SimpleNamespace(
                    tenants=cache, listener=None, pool=pool, writer=writer, budgets=None
                )
                reader = InMemoryMetricReader()
                provider = MeterProvider(metric_readers=[reader])
                instrument_store(store, provider)
                points = otel_points(reader)
                provider.shutdown()
                return points
        finally:
            await pool.close()

    points = asyncio.run(main())
    assert points["tenantstore.cache.hits"][0].value == 2
    assert points["tenantstore.cache.misses"][0].value == 1
    assert points["tenantstore.writer.pending"][0].value == 0
    assert "tenantstore.listener.connected" not in points
    assert "db.client.connection.count" in points


@pytest.mark.parametrize(
    ("modules", "call", "extra"),
    [
        (
            ["prometheus_client", "prometheus_client.metrics_core"],
            lambda: TenantStoreCollector(),
            "tenantstore[prometheus]",
        ),
        (
            ["opentelemetry", "opentelemetry.metrics"],
            lambda: instrument(),
            "tenantstore[opentelemetry]",
        ),
    ],
    ids=["prometheus", "opentelemetry"],
)
def test_without_the_extra_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch, modules: list[str], call: Any, extra: str
) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[")) as info:
        call()
    assert f"pip install '{extra}'" in str(info.value)


def test_metric_names_are_unique_and_well_formed() -> None:
    prometheus = [info.prometheus for info in METRICS]
    otel = [info.opentelemetry for info in METRICS]
    assert len(set(prometheus)) == len(prometheus)
    assert len(set(otel)) == len(otel)
    for info in METRICS:
        assert info.prometheus.startswith(f"tenantstore_{info.part}_")
        assert info.prometheus.endswith("_total") == (info.kind == "counter")
        assert info.opentelemetry.startswith(("tenantstore.", "db.client.connection."))


def test_the_readme_lists_every_metric_by_name() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Metrics\n", 1)[1].split("\n## ", 1)[0]
    for info in METRICS:
        assert f"| `{info.prometheus}` | `{info.opentelemetry}` |" in section
