"""Tenant operations on PostgreSQL against hand-written psycopg through the same pool.

The floor of every row is what a user could write by hand with psycopg: the same SQL
(taken from `tenantstore._sql`), prepared, on a connection from the same
`create_pool` pool (autocommit), fetching the row and building nothing. The key
lookup also shows one raw psycopg connection (no pool), SQLAlchemy Core 2 — the peer
a user would pick — with an AUTOCOMMIT engine and with a default engine (a
transaction around each call), and building the same SELECT with PyPika per call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import psycopg
import sqlalchemy as sa
from psycopg_pool import ConnectionPool
from pypika import Parameter, PostgreSQLQuery, Table

from benchmarks.measure import CheckFailed, Target, Variant, per_call
from benchmarks.scenario import (
    Context,
    Scenario,
    check_id_row,
    check_tenant,
    cycle,
    export,
    require_params,
)
from tenantstore import PostgresTenantRepository, Tenant, _sql, create_pool

__all__ = ["SCENARIOS", "pypika_lookup_sql"]

FLOOR_LABEL = "hand-written psycopg, same pool"
FLOOR_TARGET = Target(1.10, "≤ 1.10x")
SQLA_TARGET = Target(0.50, "≥ 2x faster")
_sha256 = hashlib.sha256


def pypika_lookup_sql() -> str:
    """SELECT_ENABLED_BY_HASH, built from scratch as a per-call builder would."""
    tenants: Any = Table("tenants")
    hash_, now = Parameter("%(hash)s"), Parameter("%(now)s")
    current: Any = (
        PostgreSQLQuery.from_(tenants)
        .select(*_sql.tenant_select(tenants))
        .where(tenants.api_key_hash == hash_)
        .where(tenants.enabled == True)  # noqa: E712  (PyPika builds SQL from ==)
        .where(tenants.api_key_expires_at.isnull() | (tenants.api_key_expires_at > now))
    )
    previous: Any = (
        PostgreSQLQuery.from_(tenants)
        .select(*_sql.tenant_select(tenants))
        .where(tenants.previous_api_key_hash == hash_)
        .where(tenants.enabled == True)  # noqa: E712
        .where(tenants.previous_api_key_expires_at > now)
    )
    sql: str = str(current.union_all(previous).limit(1).get_sql())
    return sql


# The lookup before the key lifecycle (migration 011): current keys only, no
# expiry, one index probe; what the Go service sends, with our well-typed columns.
CURRENT_KEY_ONLY_SQL: Final = (
    f"SELECT {', '.join(c.get_sql() for c in _sql.tenant_select(Table('tenants')))}"
    " FROM tenants WHERE api_key_hash = %(hash)s AND enabled = true"
)


def sqlalchemy_lookup() -> Any:
    """The same SELECT in SQLAlchemy Core (compiled once, then from its cache)."""
    t = sa.table("tenants", *(sa.column(c) for c in _sql.TENANT_COLUMNS))

    def text_array(column: str) -> Any:
        empty: Any = sa.literal_column("'{}'")
        one_dimension = sa.case(
            (sa.func.array_ndims(t.c[column]) > sa.literal_column("1"), empty),
            else_=sa.func.array_remove(t.c[column], sa.null()),
        )
        return sa.func.coalesce(one_dimension, empty)

    # The same well-typed columns as `_sql.tenant_select`: the same work for the
    # server, so the rows compare the clients.
    columns = [
        sa.cast(t.c.id, sa.Text),
        t.c.name,
        t.c.api_key_hash,
        sa.func.coalesce(t.c.budget_usd, sa.literal_column("0.00")),
        sa.func.coalesce(t.c.rate_limit_rpm, sa.literal_column("60")),
        text_array("allowed_models"),
        t.c.default_provider,
        text_array("fallback_providers"),
        sa.func.coalesce(t.c.enabled, sa.false()),
        t.c.created_at,
        t.c.updated_at,
        t.c.api_key_expires_at,
        t.c.previous_api_key_hash,
        t.c.previous_api_key_expires_at,
        t.c.api_key_prefix,
    ]
    now: Any = sa.bindparam("now")
    current = (
        sa.select(*columns)
        .where(t.c.api_key_hash == sa.bindparam("hash"))
        .where(t.c.enabled == sa.true())
        .where(sa.or_(t.c.api_key_expires_at.is_(None), t.c.api_key_expires_at > now))
    )
    previous = (
        sa.select(*columns)
        .where(t.c.previous_api_key_hash == sa.bindparam("hash"))
        .where(t.c.enabled == sa.true())
        .where(t.c.previous_api_key_expires_at > now)
    )
    union: Any = sa.union_all(current, previous).limit(1)
    return union


def _hash(key: str) -> str:
    return _sha256(key.encode()).hexdigest()


def _params(key: str) -> dict[str, Any]:
    # The lookup's instant is the caller's clock, as the repository passes it.
    return {"hash": _hash(key), "now": datetime.now(UTC)}


def _pool_fetchone(pool: ConnectionPool, statement: str) -> Callable[[Any], Any]:
    def fetch(params: Any) -> Any:
        with pool.connection() as conn:
            return conn.execute(statement, params, prepare=True).fetchone()

    return fetch


@contextlib.contextmanager
def pg_lookup(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    by_key = lookup.tenants.by_key
    keys = random.Random(1).sample(lookup.tenants.keys, len(lookup.tenants.keys))
    arg = cycle(keys)
    expected: Callable[[Any], str] = lambda key: by_key[key].id  # noqa: E731
    statement = _sql.SELECT_ENABLED_BY_HASH
    if pypika_lookup_sql() != statement:
        raise RuntimeError("PyPika per-call row no longer builds tenantstore's SQL")

    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(create_pool(lookup.url))
        repo = PostgresTenantRepository(pool)
        raw = stack.enter_context(psycopg.connect(lookup.url, autocommit=True))

        def connect() -> Any:
            return psycopg.connect(lookup.url)

        auto = sa.create_engine(
            "postgresql+psycopg://", creator=connect, isolation_level="AUTOCOMMIT"
        )
        default = sa.create_engine("postgresql+psycopg://", creator=connect)
        stack.callback(auto.dispose)
        stack.callback(default.dispose)
        select = sqlalchemy_lookup()

        def floor(key: str) -> Any:
            with pool.connection() as conn:
                cur = conn.execute(statement, _params(key), prepare=True)
                return cur.fetchone()

        def current_key_only(key: str) -> Any:
            with pool.connection() as conn:
                cur = conn.execute(
                    CURRENT_KEY_ONLY_SQL, {"hash": _hash(key)}, prepare=True
                )
                return cur.fetchone()

        def one_connection(key: str) -> Any:
            return raw.execute(statement, _params(key), prepare=True).fetchone()

        def sqlalchemy(engine: sa.Engine) -> Callable[[str], Any]:
            def lookup(key: str) -> Any:
                with engine.connect() as conn:
                    return conn.execute(select, _params(key)).fetchone()

            return lookup

        def pypika(key: str) -> Any:
            sql = pypika_lookup_sql()
            with pool.connection() as conn:
                return conn.execute(sql, _params(key), prepare=True).fetchone()

        rows = check_id_row(expected)
        yield [
            Variant(
                "PostgresTenantRepository.get_by_api_key",
                "ours",
                per_call(repo.get_by_api_key, arg, check_tenant(expected)),
            ),
            Variant(
                FLOOR_LABEL,
                "floor",
                per_call(floor, arg, rows),
                target=FLOOR_TARGET,
                note="prepared, fetchone, builds nothing",
            ),
            Variant(
                "hand-written, current key only (before 011)",
                "reference",
                per_call(current_key_only, arg, rows),
                note="one index probe, no expiry: the Go service's query",
            ),
            Variant(
                "one raw psycopg connection",
                "reference",
                per_call(one_connection, arg, rows),
                note="no pool",
            ),
            Variant(
                "SQLAlchemy Core 2, default engine",
                "peer",
                per_call(sqlalchemy(default), arg, rows),
                target=SQLA_TARGET,
                note="BEGIN/ROLLBACK per call: what create_engine(url) gives",
            ),
            Variant(
                "SQLAlchemy Core 2, AUTOCOMMIT engine",
                "peer",
                per_call(sqlalchemy(auto), arg, rows),
                note="tuned: one round trip per call, like ours",
            ),
            Variant(
                "PyPika build per call, same pool",
                "reference",
                per_call(pypika, arg, rows),
            ),
        ]


@contextlib.contextmanager
def get_by_id(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    ids = [t.id for t in lookup.tenants.tenants]
    ids = random.Random(2).sample(ids, len(ids))
    arg = cycle(ids)
    same: Callable[[Any], str] = lambda tenant_id: tenant_id  # noqa: E731
    with create_pool(lookup.url) as pool:
        repo = PostgresTenantRepository(pool)
        fetch = _pool_fetchone(pool, _sql.SELECT_BY_ID)
        yield [
            Variant(
                "PostgresTenantRepository.get_by_id",
                "ours",
                per_call(repo.get_by_id, arg, check_tenant(same)),
            ),
            Variant(
                FLOOR_LABEL,
                "floor",
                per_call(lambda i: fetch({"id": i}), arg, check_id_row(same)),
            ),
        ]


@contextlib.contextmanager
def list_all(ctx: Context) -> Iterator[list[Variant]]:
    url, tenants = ctx.data.listing()
    # created_at DESC, then id: the tenants were created one millisecond apart.
    expected = [t.id for t in reversed(tenants.tenants)]

    def check_tenants(_: object, result: list[Tenant]) -> None:
        if [t.id for t in result] != expected:
            raise CheckFailed("list() returned other tenants or another order")

    def check_rows(_: object, rows: list[Any]) -> None:
        if [r[0] for r in rows] != expected:
            raise CheckFailed("the hand-written SELECT returned other rows")

    with create_pool(url) as pool:
        repo = PostgresTenantRepository(pool)

        def floor(_: object) -> list[Any]:
            with pool.connection() as conn:
                return conn.execute(_sql.SELECT_ALL, prepare=True).fetchall()

        yield [
            Variant(
                "PostgresTenantRepository.list",
                "ours",
                per_call(lambda _: repo.list(), cycle([None]), check_tenants),
                note="builds every Tenant",
            ),
            Variant(
                FLOOR_LABEL,
                "floor",
                per_call(floor, cycle([None]), check_rows),
                note="fetchall, builds nothing",
            ),
        ]


def _tenant_params(t: Tenant, now: datetime) -> dict[str, Any]:
    """Parameters a hand-written INSERT/UPDATE of tenants would pass."""
    return {
        "id": t.id,
        "name": t.name,
        "api_key_hash": t.api_key_hash,
        "same_hash": t.api_key_hash,
        "budget_usd": t.budget_usd,
        "rate_limit_rpm": t.rate_limit_rpm,
        "allowed_models": list(t.allowed_models),
        "default_provider": t.default_provider,
        "fallback_providers": list(t.fallback_providers),
        "enabled": t.enabled,
        "created_at": now,
        "updated_at": now,
        "now": now,
        "api_key_encrypted": None,
        "expected": t.updated_at,
        "api_key_expires_at": t.api_key_expires_at,
        "previous_api_key_hash": None,
        "previous_api_key_expires_at": None,
        "api_key_prefix": t.api_key_prefix,
        # The audit context every write states (see tenantstore.audit).
        "audit_actor": "",
        "audit_at": now.isoformat(),
    }


def _new_tenant(prefix: str) -> Callable[[int], Tenant]:
    def make(i: int) -> Tenant:
        return Tenant(
            name=f"{prefix}-{i:07d}",
            api_key_hash=_sha256(os.urandom(32)).hexdigest(),
            budget_usd=Decimal("50.00"),
            rate_limit_rpm=120,
            allowed_models=("gpt-4o-mini",),
            default_provider="openai",
            fallback_providers=("anthropic",),
        )

    return make


@contextlib.contextmanager
def create(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    same: Callable[[Any], str] = lambda t: t.id  # noqa: E731
    sample = _tenant_params(_new_tenant("x")(0), datetime.now(UTC))
    require_params(_sql.INSERT_TENANT, sample, "create")
    with create_pool(lookup.url) as pool:
        repo = PostgresTenantRepository(pool)
        fetch = _pool_fetchone(pool, _sql.INSERT_TENANT)
        try:
            yield [
                Variant(
                    "PostgresTenantRepository.create",
                    "ours",
                    per_call(
                        repo.create,
                        _new_tenant("bench-create-ours"),
                        check_tenant(same),
                    ),
                    note="validates, builds the Tenant",
                ),
                Variant(
                    FLOOR_LABEL,
                    "floor",
                    per_call(
                        lambda t: fetch(_tenant_params(t, datetime.now(UTC))),
                        _new_tenant("bench-create-hand"),
                        check_id_row(same),
                    ),
                ),
            ]
        finally:
            with pool.connection() as conn:
                conn.execute("DELETE FROM tenants WHERE name LIKE 'bench-create-%'")


class _Versions:
    """Read-modify-write updates of a set of tenants, as a caller would make them.

    Each update starts from the tenant as the previous update returned it (so its
    `updated_at` is current: the store applies it only if nobody changed the tenant
    in between) and sets a new budget; `check` verifies the result and keeps it.
    Ours and the floor each get their own tenants, so neither makes the other's
    versions stale.
    """

    def __init__(self, current: list[Tenant]) -> None:
        self.order = [t.id for t in current]
        self.latest = {t.id: t for t in current}

    def next(self, i: int) -> Tenant:
        cents = (i * 7919) % 10_000_000
        t = self.latest[self.order[i % len(self.order)]]
        return dataclasses.replace(t, budget_usd=Decimal(cents).scaleb(-2))

    def check(self, t: Tenant, result: Any) -> None:
        if isinstance(result, Tenant):
            got, budget, updated = result.id, result.budget_usd, result
        else:  # a raw row, in _sql.TENANT_COLUMNS order
            got, budget = result[0], result[3]
            updated = dataclasses.replace(t, updated_at=result[10])
        if got != t.id or budget != t.budget_usd:
            raise CheckFailed(f"update of {t.id} returned {result!r}")
        self.latest[t.id] = updated


def _update_sets(
    pool: ConnectionPool, tenants: list[Tenant], count: int
) -> list[_Versions]:
    """`count` disjoint sets of tenants, read fresh (earlier runs updated them)."""
    base = tenants[: min(1000, len(tenants))]
    repo = PostgresTenantRepository(pool)
    return [
        _Versions([repo.get_by_id(t.id) for t in base[k::count]]) for k in range(count)
    ]


# The statement ours runs for an update of a tenant it read (versioned, when the
# library has optimistic concurrency; else the plain one).
_UPDATE: str = getattr(
    _sql, "UPDATE_TENANT_KEEP_KEY_VERSIONED", _sql.UPDATE_TENANT_KEEP_KEY
)


def _update_floor(pool: ConnectionPool) -> Callable[[Tenant], Any]:
    fetch = _pool_fetchone(pool, _UPDATE)
    return lambda t: fetch(_tenant_params(t, datetime.now(UTC)))


@contextlib.contextmanager
def update(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    sample = _tenant_params(lookup.tenants.tenants[0], datetime.now(UTC))
    require_params(_UPDATE, sample, "update")
    with create_pool(lookup.url) as pool:
        repo = PostgresTenantRepository(pool)
        mine, hand = _update_sets(pool, lookup.tenants.tenants, 2)
        yield [
            Variant(
                "PostgresTenantRepository.update",
                "ours",
                per_call(repo.update, mine.next, mine.check),
                note="validates, builds the Tenant",
            ),
            Variant(
                FLOOR_LABEL,
                "floor",
                per_call(_update_floor(pool), hand.next, hand.check),
            ),
        ]


@contextlib.contextmanager
def update_cached(ctx: Context) -> Iterator[list[Variant]]:
    from benchmarks.scenarios_cache import cache_options

    lookup = ctx.data.lookup()
    keys = {t.id: k for k, t in lookup.tenants.by_key.items()}
    with create_pool(lookup.url) as pool:
        cls = export("CachedTenantRepository")
        cached = cls(PostgresTenantRepository(pool), **cache_options(cls))
        mine, hand = _update_sets(pool, lookup.tenants.tenants, 2)

        def cached_then_update(i: int) -> Tenant:
            # Untimed: make sure the tenant is in the cache, so update invalidates.
            t = mine.next(i)
            cached.get_by_api_key(keys[t.id])
            return t

        try:
            yield [
                Variant(
                    "CachedTenantRepository(Postgres).update",
                    "ours",
                    per_call(cached.update, cached_then_update, mine.check),
                    note="invalidates a cached entry",
                ),
                Variant(
                    FLOOR_LABEL + " (no cache)",
                    "floor",
                    per_call(_update_floor(pool), hand.next, hand.check),
                ),
            ]
        finally:
            close = getattr(cached, "close", None)
            if callable(close):
                close()


SCENARIOS = (
    Scenario(
        "pg-lookup",
        "get_by_api_key, PostgreSQL, no cache, {s.tenants:,} tenants",
        pg_lookup,
    ),
    Scenario("get-by-id", "get_by_id, PostgreSQL, {s.tenants:,} tenants", get_by_id),
    Scenario("list", "list, PostgreSQL, {s.list_tenants:,} tenants", list_all),
    Scenario("create", "create, PostgreSQL", create),
    Scenario("update", "update, PostgreSQL", update),
    Scenario(
        "update-cached",
        "update through the cache (invalidation), PostgreSQL",
        update_cached,
        requires=("CachedTenantRepository",),
    ),
)
