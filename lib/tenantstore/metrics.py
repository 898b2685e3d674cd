"""Metrics for every counter tenantstore's parts keep: Prometheus and OpenTelemetry.

`TenantStoreCollector` is a Prometheus collector (the `tenantstore[prometheus]`
extra); `instrument` and `instrument_store` create OpenTelemetry observable
instruments (the `tenantstore[opentelemetry]` extra, opentelemetry-api). Both read
the parts' own snapshots when scraped or collected, and nothing in between: the
cache's `stats()`, the listener's `stats()`, the pool's `get_stats()`, the usage
writer's `stats()` and the budget guard's `stats()`, sync or async alike. Neither
extra is imported until it is used; this module imports without them.

Prometheus names are `tenantstore_<part>_<what>`, counters ending in `_total`,
times in seconds. OpenTelemetry names are `tenantstore.<part>.<what>`, except for
the pool, which follows the semantic conventions for database client connection
pools (`db.client.connection.count` by `db.client.connection.state`, `.max`,
`.pending_requests`, with `db.system.name` = `postgresql` and
`db.client.connection.pool.name`). `METRICS` lists every name.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from prometheus_client.metrics_core import Metric

__all__ = [
    "METRICS",
    "MetricInfo",
    "TenantStoreCollector",
    "instrument",
    "instrument_store",
]

_COUNTER: Final = "counter"
_GAUGE: Final = "gauge"  # a level: Prometheus gauge, OpenTelemetry UpDownCounter
_STATE: Final = "gauge/state"  # a level by connection state (the pool's count)
_FLAG: Final = "gauge/flag"  # a level that does not add up: OpenTelemetry gauge


@dataclasses.dataclass(frozen=True, slots=True)
class MetricInfo:
    """One metric: the part that keeps it, its names, kind, unit and meaning.

    `prometheus` is the exposed name (a counter's samples end in `_total`),
    `opentelemetry` the instrument's; `kind` is "counter" or "gauge"; `instrument`
    the OpenTelemetry instrument ("counter", "up_down_counter" for a level that
    adds up, "gauge" for one that does not); `label` the one label it has, if any
    (the pool's connections by "state"); `scale` converts the part's figure
    (milliseconds to seconds); `stat` names that figure in the part's stats.
    """

    part: str
    stat: str
    prometheus: str
    opentelemetry: str
    kind: str
    unit: str
    description: str
    instrument: str
    label: str | None = None
    scale: float = 1.0


def _m(
    part: str,
    stat: str,
    what: str,
    kind: str,
    unit: str,
    description: str,
    *,
    otel: str | None = None,
    scale: float = 1.0,
) -> MetricInfo:
    instrument = {_COUNTER: "counter", _FLAG: "gauge"}.get(kind, "up_down_counter")
    label = "state" if kind == _STATE else None
    kind = _COUNTER if kind == _COUNTER else _GAUGE
    suffix = "_total" if kind == _COUNTER else ""
    return MetricInfo(
        part=part,
        stat=stat,
        prometheus=f"tenantstore_{part}_{what}{suffix}",
        opentelemetry=otel or f"tenantstore.{part}.{what}",
        kind=kind,
        unit=unit,
        description=description,
        scale=scale,
        instrument=instrument,
        label=label,
    )


_MS: Final = 0.001

METRICS: Final[tuple[MetricInfo, ...]] = (
    # The cache (CacheStats).
    _m(
        "cache",
        "hits",
        "hits",
        _COUNTER,
        "{lookup}",
        "Key lookups answered by a fresh entry.",
    ),
    _m(
        "cache",
        "negative_hits",
        "negative_hits",
        _COUNTER,
        "{lookup}",
        'Key lookups answered by a fresh "no such key" entry.',
    ),
    _m(
        "cache",
        "rejected",
        "rejected",
        _COUNTER,
        "{lookup}",
        "Key lookups refused without a query (malformed, or a bad checksum).",
    ),
    _m(
        "cache",
        "misses",
        "misses",
        _COUNTER,
        "{lookup}",
        "Key lookups that asked the store or joined a caller asking.",
    ),
    _m(
        "cache",
        "fills",
        "fills",
        _COUNTER,
        "{lookup}",
        "Lookups of the inner store (misses minus the ones single flight spared).",
    ),
    _m(
        "cache",
        "invalidations",
        "invalidations",
        _COUNTER,
        "{invalidation}",
        "Invalidations: writes through the cache, notifications, listener drops.",
    ),
    _m(
        "cache",
        "stale_serves",
        "stale_serves",
        _COUNTER,
        "{lookup}",
        "Answers from an expired entry while the database was unreachable.",
    ),
    _m(
        "cache",
        "evictions",
        "evictions",
        _COUNTER,
        "{entry}",
        "Entries dropped to make room.",
    ),
    _m("cache", "size", "entries", _GAUGE, "{entry}", "Tenants cached now."),
    _m(
        "cache",
        "negative_size",
        "negative_entries",
        _GAUGE,
        "{entry}",
        "Unknown keys remembered now.",
    ),
    _m(
        "cache",
        "in_flight",
        "fills_in_flight",
        _GAUGE,
        "{lookup}",
        "Inner lookups under way now.",
    ),
    # The listener (ListenerStats).
    _m(
        "listener",
        "connected",
        "connected",
        _FLAG,
        "1",
        "1 while the listener listens and its heartbeat comes back, else 0.",
    ),
    _m(
        "listener",
        "reconnects",
        "reconnects",
        _COUNTER,
        "{reconnect}",
        "Times LISTEN was re-established after a loss.",
    ),
    _m(
        "listener",
        "notifications",
        "notifications",
        _COUNTER,
        "{notification}",
        "Changes to tenants applied to the caches.",
    ),
    _m(
        "listener",
        "heartbeats",
        "heartbeats",
        _COUNTER,
        "{heartbeat}",
        "Heartbeats that came back.",
    ),
    _m(
        "listener",
        "heartbeats_missed",
        "heartbeats_missed",
        _COUNTER,
        "{heartbeat}",
        "Losses for want of a heartbeat.",
    ),
    _m(
        "listener",
        "revalidations",
        "revalidations",
        _COUNTER,
        "{query}",
        "Revalidation queries (one each time it listens again).",
    ),
    _m(
        "listener",
        "revalidation_dropped",
        "revalidation_dropped",
        _COUNTER,
        "{entry}",
        "Entries revalidation dropped (changed, disabled or gone).",
    ),
    # The pool (psycopg_pool's get_stats()).
    _m(
        "pool",
        "connections",
        "connections",
        _STATE,
        "{connection}",
        "Connections open now, by state (idle, used).",
        otel="db.client.connection.count",
    ),
    _m(
        "pool",
        "pool_max",
        "max_connections",
        _GAUGE,
        "{connection}",
        "The most connections the pool opens (max_size).",
        otel="db.client.connection.max",
    ),
    _m(
        "pool",
        "pool_min",
        "min_connections",
        _GAUGE,
        "{connection}",
        "The connections the pool keeps open (min_size).",
        otel="tenantstore.pool.min_connections",
    ),
    _m(
        "pool",
        "requests_waiting",
        "requests_waiting",
        _GAUGE,
        "{request}",
        "Callers waiting for a connection now.",
        otel="db.client.connection.pending_requests",
    ),
    _m(
        "pool",
        "requests_num",
        "requests",
        _COUNTER,
        "{request}",
        "Connections asked of the pool.",
    ),
    _m(
        "pool",
        "requests_queued",
        "requests_queued",
        _COUNTER,
        "{request}",
        "Requests that had to wait for a connection.",
    ),
    _m(
        "pool",
        "requests_errors",
        "requests_errors",
        _COUNTER,
        "{request}",
        "Requests that failed (timed out, queue full).",
    ),
    _m(
        "pool",
        "requests_wait_ms",
        "requests_wait_seconds",
        _COUNTER,
        "s",
        "Time spent waiting for a connection.",
        otel="tenantstore.pool.requests_wait_time",
        scale=_MS,
    ),
    _m(
        "pool",
        "usage_ms",
        "usage_seconds",
        _COUNTER,
        "s",
        "Time connections were out of the pool.",
        otel="tenantstore.pool.usage_time",
        scale=_MS,
    ),
    _m(
        "pool",
        "returns_bad",
        "returns_bad",
        _COUNTER,
        "{connection}",
        "Connections returned broken or mid-transaction.",
    ),
    _m(
        "pool",
        "connections_num",
        "connections_opened",
        _COUNTER,
        "{connection}",
        "Connection attempts to the server.",
    ),
    _m(
        "pool",
        "connections_ms",
        "connect_seconds",
        _COUNTER,
        "s",
        "Time spent opening connections.",
        otel="tenantstore.pool.connect_time",
        scale=_MS,
    ),
    _m(
        "pool",
        "connections_errors",
        "connect_errors",
        _COUNTER,
        "{connection}",
        "Connection attempts that failed.",
    ),
    _m(
        "pool",
        "connections_lost",
        "connections_lost",
        _COUNTER,
        "{connection}",
        "Connections found broken by the pool's checks.",
    ),
    # The usage writer (UsageWriterStats).
    _m(
        "writer",
        "submitted",
        "submitted",
        _COUNTER,
        "{record}",
        "Records submitted (replayed from a spool included).",
    ),
    _m("writer", "written", "written", _COUNTER, "{record}", "Records written."),
    _m(
        "writer",
        "duplicates",
        "duplicates",
        _COUNTER,
        "{record}",
        "Records stored before (same tenant and request id).",
    ),
    _m(
        "writer",
        "rejected",
        "rejected",
        _COUNTER,
        "{record}",
        "Records of an unknown tenant.",
    ),
    _m("writer", "batches", "batches", _COUNTER, "{batch}", "Batches written."),
    _m(
        "writer",
        "retries",
        "retries",
        _COUNTER,
        "{batch}",
        "Batches tried again after a failure.",
    ),
    _m(
        "writer",
        "spool_skipped",
        "spool_skipped",
        _COUNTER,
        "{record}",
        "Spool records that could not be read back at start.",
    ),
    _m(
        "writer",
        "pending",
        "pending",
        _GAUGE,
        "{record}",
        "Records submitted and not yet written or rejected.",
    ),
    # The budget guard (BudgetStats).
    _m(
        "budget",
        "reserved",
        "reserved",
        _COUNTER,
        "{reservation}",
        "Reservations granted on limited budgets.",
    ),
    _m(
        "budget",
        "reserved_locally",
        "reserved_locally",
        _COUNTER,
        "{reservation}",
        "Of those, granted from the held share without I/O.",
    ),
    _m(
        "budget",
        "refused",
        "refused",
        _COUNTER,
        "{reservation}",
        "Reservations refused (BudgetExceeded).",
    ),
    _m(
        "budget",
        "settled",
        "settled",
        _COUNTER,
        "{reservation}",
        "Reservations settled.",
    ),
    _m(
        "budget",
        "lease_steps",
        "lease_steps",
        _COUNTER,
        "{transaction}",
        "Transactions taking or renewing a share.",
    ),
    _m(
        "budget",
        "round_trips",
        "round_trips",
        _COUNTER,
        "{round_trip}",
        "Round trips to the database.",
    ),
)
"""Every metric, in the order they are exposed."""

_PARTS: Final = ("cache", "listener", "pool", "writer", "budgets")
_DB_SYSTEM: Final = {"db.system.name": "postgresql"}


def _require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"tenantstore.metrics needs {module.split('.')[0]} for this: "
            f"pip install 'tenantstore[{extra}]'"
        ) from exc


def _read(part: str, obj: Any) -> Callable[[str], Any]:
    """A getter of `obj`'s figures by stat name, from one snapshot."""
    if part == "pool":
        stats: Mapping[str, int] = obj.get_stats()

        def pool_stat(stat: str) -> Any:
            if stat == "connections":
                size = stats.get("pool_size", 0)
                idle = stats.get("pool_available", 0)
                return {"idle": idle, "used": max(0, size - idle)}
            # psycopg_pool reports a counter only once it moved.
            return stats.get(stat, 0)

        return pool_stat
    snapshot = obj.stats()
    return lambda stat: getattr(snapshot, stat)


def _parts(
    cache: Any, listener: Any, pool: Any, writer: Any, budgets: Any
) -> dict[str, Any]:
    given = dict(zip(_PARTS, (cache, listener, pool, writer, budgets), strict=True))
    return {part: obj for part, obj in given.items() if obj is not None}


def _store_parts(store: Any) -> dict[str, Any]:
    tenants = getattr(store, "tenants", None)
    return {
        "cache": tenants if callable(getattr(tenants, "stats", None)) else None,
        "listener": getattr(store, "listener", None),
        "pool": getattr(store, "pool", None),
        "writer": getattr(store, "writer", None),
        "budgets": getattr(store, "budgets", None),
    }


# -- Prometheus ---------------------------------------------------------------------


class TenantStoreCollector:
    """A Prometheus collector of the given parts' counters and levels.

    Each part may be sync or async, or None (left out): `cache` a
    `CachedTenantRepository`, `listener` a `TenantCacheListener`, `pool` a
    psycopg_pool pool, `writer` a `UsageWriter`, `budgets` a `BudgetGuard`. Each
    scrape reads one snapshot of each part. Register it once per registry
    (`registry.register(collector)`); two collectors of the same parts' kinds in
    one registry would expose the same names. Raises `ImportError` (naming the
    `tenantstore[prometheus]` extra) when prometheus_client is not installed.
    """

    def __init__(
        self,
        *,
        cache: Any = None,
        listener: Any = None,
        pool: Any = None,
        writer: Any = None,
        budgets: Any = None,
    ) -> None:
        self._core = _require("prometheus_client.metrics_core", "prometheus")
        self._parts = _parts(cache, listener, pool, writer, budgets)

    @classmethod
    def for_store(cls, store: Any) -> TenantStoreCollector:
        """A collector of a `Store`'s (or `AsyncStore`'s) parts: its cache
        (`store.tenants`), `listener`, `pool`, `writer` and `budgets`, those it has."""
        return cls(**_store_parts(store))

    def describe(self) -> Iterator[Metric]:
        """The metrics, without samples (so that registering reads no part)."""
        for info in METRICS:
            if _owner(info) in self._parts:
                yield self._family(info)

    def collect(self) -> Iterator[Metric]:
        """One snapshot of each part, as metric families."""
        for part, obj in self._parts.items():
            read = _read(part, obj)
            for info in METRICS:
                if _owner(info) != part:
                    continue
                family = self._family(info)
                value = read(info.stat)
                if info.label is not None:
                    for state, count in value.items():
                        family.add_metric([state], float(count))
                else:
                    family.add_metric([], float(value) * info.scale)
                yield family

    def _family(self, info: MetricInfo) -> Any:
        labels = [] if info.label is None else [info.label]
        if info.kind == _COUNTER:
            return self._core.CounterMetricFamily(
                info.prometheus, info.description, labels=labels
            )
        return self._core.GaugeMetricFamily(
            info.prometheus, info.description, labels=labels
        )


def _owner(info: MetricInfo) -> str:
    """The keyword that gives `info`'s part (the budget guard is `budgets`)."""
    return "budgets" if info.part == "budget" else info.part


# -- OpenTelemetry ------------------------------------------------------------------


def instrument(
    meter_provider: MeterProvider | None = None,
    *,
    cache: Any = None,
    listener: Any = None,
    pool: Any = None,
    writer: Any = None,
    budgets: Any = None,
) -> list[Any]:
    """Create OpenTelemetry observable instruments for the given parts.

    The parts are those of `TenantStoreCollector`. The instruments come from the
    meter "tenantstore" of `meter_provider` (the global one when None) and read
    each part when the SDK collects: counters as observable counters, levels as
    observable up-down counters (the listener's `connected` as a gauge). The
    pool's follow the semantic conventions for database clients. Returns the
    instruments, which hold the parts for as long as the meter lives. Raises
    `ImportError` (naming the `tenantstore[opentelemetry]` extra) when
    opentelemetry-api is not installed.
    """
    otel = _require("opentelemetry.metrics", "opentelemetry")
    from . import __version__

    meter = otel.get_meter("tenantstore", __version__, meter_provider=meter_provider)
    parts = _parts(cache, listener, pool, writer, budgets)
    instruments = []
    for info in METRICS:
        obj = parts.get(_owner(info))
        if obj is None:
            continue
        if info.instrument == "counter":
            create = meter.create_observable_counter
        elif info.instrument == "gauge":
            create = meter.create_observable_gauge
        else:
            create = meter.create_observable_up_down_counter
        instruments.append(
            create(
                info.opentelemetry,
                callbacks=[_callback(otel, info, obj)],
                unit=info.unit,
                description=info.description,
            )
        )
    return instruments


def instrument_store(
    store: Any, meter_provider: MeterProvider | None = None
) -> list[Any]:
    """`instrument` for a `Store`'s (or `AsyncStore`'s) parts, those it has."""
    return instrument(meter_provider, **_store_parts(store))


def _callback(
    otel: ModuleType, info: MetricInfo, obj: Any
) -> Callable[[Any], Iterable[Any]]:
    Observation = otel.Observation
    attributes: dict[str, str] = {}
    if info.part == "pool":
        attributes = {
            **_DB_SYSTEM,
            "db.client.connection.pool.name": str(getattr(obj, "name", "tenantstore")),
        }

    def observe(options: Any) -> Iterable[Any]:
        value = _read(info.part, obj)(info.stat)
        if info.label is not None:
            return [
                Observation(count, {**attributes, "db.client.connection.state": state})
                for state, count in value.items()
            ]
        scaled = float(value) * info.scale if info.scale != 1.0 else int(value)
        return [Observation(scaled, attributes)]

    return observe
