"""The benchmark databases and what is loaded into them, with the expected answers.

Two scratch databases on the server from `tests.pgserver` (`DATABASE_URL`, else an
embedded PostgreSQL), migrated with `tenantstore.migrate` (the lookup database is
loaded at `LOAD_VERSION` and migrated to the latest version after: the upgrade path of
a database with history), created when a scenario first needs them and dropped at
the end:

- *lookup*: `Sizes.tenants` tenants with real API keys (COPY), plus a few tenants
  that own usage rows: one per `Sizes.cost_rows` size and one that records.
- *listing*: exactly `Sizes.list_tenants` tenants, for `list()`.

Usage rows are generated server-side (`generate_series`) on a fixed grid of
timestamps that no benchmark window boundary falls on, so each expected sum is
computed here in Python once and stays right however long the run takes. A big load
drops the secondary indexes and the foreign key first and rebuilds them after (the
same definitions, read back from the catalog): 1,000,000 rows take seconds, not
half a minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.measure import Progress
from tenantstore import Tenant, generate_api_key, hash_api_key, migrate
from tests.pgserver import scratch_database

__all__ = ["Data", "Lookup", "Sizes", "TenantSet", "UsageTenant"]

WINDOW = timedelta(days=30)  # get_tenant_total_cost's "since 30 days"
_SPREAD = timedelta(days=40)  # usage rows span this much, so ~1/4 fall outside
COST_UNIT = Decimal("1E-7")  # row g costs ((g % 1000) + 1) * COST_UNIT
_KEEP_IDS = 10_000  # expected request ids are listed for tenants this small
# The schema version the bulk data is loaded at: the contract's columns (cost
# precision) and row rules, before the unique request index and the daily totals.
# The migrations after it must take existing rows into account anyway (a database
# the Go service filled), and do it in batches.
LOAD_VERSION = 2


@dataclass(frozen=True)
class Sizes:
    tenants: int  # in the lookup database
    list_tenants: int  # in the listing database
    cost_rows: tuple[int, int, int]  # usage rows of three tenants; [0] for get_usage


@dataclass(frozen=True)
class TenantSet:
    """Tenants as loaded: keys, and the Tenant each key must find."""

    keys: list[str]
    tenants: list[Tenant]
    by_key: dict[str, Tenant]


@dataclass(frozen=True)
class UsageTenant:
    """A tenant with `rows` usage rows, and the answers about them."""

    id: str
    rows: int
    since_window: datetime  # WINDOW before the newest row, off the grid
    total_in_window: Decimal
    since_all: datetime  # before every row
    request_ids_desc: list[str]  # every row, newest first (small tenants only)


@dataclass
class Lookup:
    url: str
    tenants: TenantSet
    usage: dict[int, UsageTenant]
    recorder_id: str


@dataclass
class Data:
    """Databases made on first use; `close()` drops them."""

    sizes: Sizes
    progress: Progress
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _lookup: Lookup | None = None
    _listing: tuple[str, TenantSet] | None = None

    def __enter__(self) -> Data:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _database(self, role: str, *, target: int | None = None) -> str:
        url = self._stack.enter_context(scratch_database(f"tenantstore_bench_{role}"))
        migrate.up(url, target)
        return url

    def lookup(self) -> Lookup:
        if self._lookup is None:
            sizes = self.sizes
            self.progress.step(
                f"loading the lookup database: {sizes.tenants:,} tenants, "
                f"usage {', '.join(f'{n:,}' for n in sizes.cost_rows if n)} rows"
            )
            # Loaded at LOAD_VERSION, then migrated: later migrations derive their
            # state (the unique index, daily cost totals) from the rows, the way
            # they do for a database the Go service filled.
            url = self._database("lookup", target=LOAD_VERSION)
            tenants = make_tenants(sizes.tenants, "lookup")
            with psycopg.connect(url, autocommit=True) as conn:
                copy_tenants(conn, tenants.tenants)
                owners = make_tenants(len(sizes.cost_rows) + 1, "usage")
                copy_tenants(conn, owners.tenants)
                load_time = datetime.now(UTC).replace(microsecond=0)
                usage = load_usage(
                    conn,
                    [
                        (owners.tenants[i].id, n)
                        for i, n in enumerate(sizes.cost_rows)
                        if n > 0
                    ],
                    load_time,
                )
            migrate.up(url)
            with psycopg.connect(url, autocommit=True) as conn:
                copy_lifecycle(conn, tenants.tenants)
                conn.execute("ANALYZE")
            self._lookup = Lookup(
                url=url,
                tenants=tenants,
                usage={u.rows: u for u in usage},
                recorder_id=owners.tenants[-1].id,
            )
        return self._lookup

    def listing(self) -> tuple[str, TenantSet]:
        if self._listing is None:
            n = self.sizes.list_tenants
            self.progress.step(f"loading the listing database: {n:,} tenants")
            url = self._database("listing")
            tenants = make_tenants(n, "list")
            with psycopg.connect(url, autocommit=True) as conn:
                copy_tenants(conn, tenants.tenants)
                copy_lifecycle(conn, tenants.tenants)
                conn.execute("ANALYZE")
            self._listing = (url, tenants)
        return self._listing


def make_tenants(n: int, prefix: str) -> TenantSet:
    """n tenants with fresh keys, created one millisecond apart (oldest first).

    Each is in the middle of its key's lifecycle (migration 011), as a gateway's
    tenants are once keys rotate: its key expires in a year, and the key it
    replaced is still in a month's grace, so lookups and the cache carry both.
    """
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    keys = [generate_api_key() for _ in range(n)]
    salt = uuid.uuid4().hex
    tenants = [
        Tenant(
            id=str(uuid.uuid4()),
            name=f"{prefix}-{i:06d}",
            api_key_hash=hash_api_key(key),
            budget_usd=Decimal("100.00"),
            rate_limit_rpm=600,
            allowed_models=("gpt-4o-mini", "claude-3-5-haiku"),
            default_provider="openai",
            fallback_providers=("anthropic",),
            enabled=True,
            created_at=base + timedelta(milliseconds=i),
            updated_at=base + timedelta(milliseconds=i),
            api_key_expires_at=base + timedelta(days=366),
            previous_api_key_hash=hash_api_key(f"previous-{salt}-{i}"),
            previous_api_key_expires_at=base + timedelta(days=31),
            api_key_prefix=key[:8],
        )
        for i, key in enumerate(keys)
    ]
    return TenantSet(keys, tenants, dict(zip(keys, tenants, strict=True)))


def copy_tenants(conn: psycopg.Connection[Any], tenants: list[Tenant]) -> None:
    columns = (
        "id, name, api_key_hash, budget_usd, rate_limit_rpm, allowed_models, "
        "default_provider, fallback_providers, enabled, created_at, updated_at"
    )
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(f"COPY tenants ({columns}) FROM STDIN") as copy,
    ):
        for t in tenants:
            copy.write_row(
                (
                    t.id,
                    t.name,
                    t.api_key_hash,
                    t.budget_usd,
                    t.rate_limit_rpm,
                    list(t.allowed_models),
                    t.default_provider,
                    list(t.fallback_providers),
                    t.enabled,
                    t.created_at,
                    t.updated_at,
                )
            )


def copy_lifecycle(conn: psycopg.Connection[Any], tenants: list[Tenant]) -> None:
    """The key lifecycle columns of `tenants`, stored (after migration 011)."""
    columns = (
        "id, api_key_expires_at, previous_api_key_hash, "
        "previous_api_key_expires_at, api_key_prefix"
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "CREATE TEMPORARY TABLE lifecycle (id uuid, api_key_expires_at"
            " timestamptz, previous_api_key_hash varchar(64),"
            " previous_api_key_expires_at timestamptz, api_key_prefix varchar(8))"
            " ON COMMIT DROP"
        )
        with cur.copy(f"COPY lifecycle ({columns}) FROM STDIN") as copy:
            for t in tenants:
                copy.write_row(
                    (
                        t.id,
                        t.api_key_expires_at,
                        t.previous_api_key_hash,
                        t.previous_api_key_expires_at,
                        t.api_key_prefix,
                    )
                )
        cur.execute(
            "UPDATE tenants t SET api_key_expires_at = l.api_key_expires_at,"
            " previous_api_key_hash = l.previous_api_key_hash,"
            " previous_api_key_expires_at = l.previous_api_key_expires_at,"
            " api_key_prefix = l.api_key_prefix"
            " FROM lifecycle l WHERE t.id = l.id"
        )


def request_id(g: int) -> str:
    return f"req-{g:09d}"


_INSERT_USAGE_SERIES = """
INSERT INTO usage_records (id, tenant_id, request_id, model, provider, input_tokens,
    output_tokens, cost_usd, cached, latency_ms, status, created_at)
SELECT
    (%(id_prefix)s || lpad(to_hex(g), 12, '0'))::uuid,
    %(tenant_id)s,
    'req-' || lpad(g::text, 9, '0'),
    'gpt-4o-mini', 'openai', g %% 1000, g %% 500,
    ((g %% 1000) + 1) * 0.0000001,
    g %% 7 = 0, 100 + g %% 50, 'success',
    %(newest)s::timestamptz
        - ((%(n)s - g)::bigint * %(step_us)s) * interval '1 microsecond'
FROM generate_series(1, %(n)s) AS g
"""


def load_usage(
    conn: psycopg.Connection[Any],
    plan: list[tuple[str, int]],
    newest: datetime,
) -> list[UsageTenant]:
    """Load `rows` usage rows for each (tenant, rows); return the expected answers.

    Row g (1..n) of a tenant is `newest - (n - g) * step` old, step = 40 days / n,
    and costs ((g % 1000) + 1) x 1e-7. Windows start half a step off the grid.
    """
    with conn.transaction(), _bulk_load(conn, "usage_records"):
        for i, (tenant_id, n) in enumerate(plan):
            conn.execute(
                _INSERT_USAGE_SERIES,
                {
                    "id_prefix": f"00000000-0000-4000-8{i:03x}-",
                    "tenant_id": tenant_id,
                    "n": n,
                    "step_us": _step_us(n),
                    "newest": newest,
                },
            )
    return [expected_usage(tenant_id, n, newest) for tenant_id, n in plan]


def _step_us(n: int) -> int:
    return max(2, int(_SPREAD / timedelta(microseconds=1)) // n)


def expected_usage(tenant_id: str, n: int, newest: datetime) -> UsageTenant:
    step_us = _step_us(n)
    k = int(WINDOW / timedelta(microseconds=1)) // step_us  # rows g >= n - k are in
    since_window = newest - timedelta(microseconds=k * step_us + step_us // 2)
    first = max(1, n - k)
    units = sum((g % 1000) + 1 for g in range(first, n + 1))
    return UsageTenant(
        id=tenant_id,
        rows=n,
        since_window=since_window,
        total_in_window=(Decimal(units) * COST_UNIT).quantize(Decimal("1E-10")),
        since_all=newest - timedelta(microseconds=n * step_us),
        request_ids_desc=(
            [request_id(g) for g in range(n, 0, -1)] if n <= _KEEP_IDS else []
        ),
    )


@contextlib.contextmanager
def _bulk_load(conn: psycopg.Connection[Any], table: str) -> Iterator[None]:
    """Drop `table`'s secondary indexes and foreign keys; rebuild them after."""
    indexes = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
        " WHERE indrelid = %s::regclass AND NOT indisprimary",
        (table,),
    ).fetchall()
    foreign = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'f'",
        (table,),
    ).fetchall()
    for name, _ in foreign:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    yield
    for _, definition in indexes:
        conn.execute(sql.SQL(definition))
    for name, definition in foreign:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(table),
                sql.Identifier(name),
                sql.SQL(definition),
            )
        )


def key_digest(key: str) -> str:
    """The floor's hash: what a hand-written cache would key by."""
    return hashlib.sha256(key.encode()).hexdigest()
