"""The Go service's own statements, replayed against a migrated database.

The Go service (github:felipepmaragno/ai-gateway) shares the database and keeps
sending what its repository sends (DESIGN, "Sharing one database with the Go
service"). Each statement below is the exact text of its source, sent with native
``$n`` placeholders (psycopg's `RawCursor`) and the values its Go code binds (a nil
slice is NULL). Asserted: what it stores, what it reads, and that tenantstore then
reads the same rows the same way on PostgreSQL as the in-memory backend does.
"""

# The Go statements are its source's text, tabs and trailing spaces included.
# ruff: noqa: E101, W291

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from tenantstore import (
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    UsageRecord,
    hash_api_key,
    migrate,
)
from tenantstore.errors import Conflict, TenantNotFound
from tests.fix_backends import FakeClock
from tests.polling import wait_until
from tests.test_migrate import scratch_db

# internal/repository/postgres.go, Create.
GO_INSERT_TENANT = """
		INSERT INTO tenants (id, name, api_key_hash, budget_usd, rate_limit_rpm, 
		                     allowed_models, default_provider, fallback_providers, enabled, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
	"""  # noqa: E501
# internal/repository/postgres.go, Update.
GO_UPDATE_TENANT = """
		UPDATE tenants
		SET name = $2, api_key_hash = $3, budget_usd = $4, rate_limit_rpm = $5,
		    allowed_models = $6, default_provider = $7, fallback_providers = $8, 
		    enabled = $9, updated_at = $10
		WHERE id = $1
	"""
# internal/repository/postgres.go, GetByAPIKey.
GO_GET_BY_API_KEY = """
		SELECT id, name, api_key_hash, budget_usd, rate_limit_rpm, 
		       allowed_models, default_provider, fallback_providers, enabled, created_at, updated_at
		FROM tenants
		WHERE api_key_hash = $1 AND enabled = true
	"""  # noqa: E501
# internal/repository/postgres_usage.go, Record.
GO_RECORD_USAGE = """
		INSERT INTO usage_records (tenant_id, request_id, model, provider, input_tokens, output_tokens, cost_usd, cached, latency_ms, status, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
	"""  # noqa: E501

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def go(url: str, statement: str, params: tuple[Any, ...]) -> int:
    """Send one Go statement as lib/pq does (native placeholders); its rowcount."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.RawCursor(conn) as cur,
    ):
        cur.execute(statement, params)
        return cur.rowcount


def go_create(
    url: str,
    *,
    key: str,
    allowed: list[str | None] | None = None,
    fallback: list[str | None] | None = None,
    enabled: bool | None = True,
    when: datetime = NOW,
) -> str:
    """The Go admin API's POST /admin/tenants: nil slices, no default provider."""
    tenant_id = str(uuid.uuid4())
    go(
        url,
        GO_INSERT_TENANT,
        (tenant_id, "go tenant", hash_api_key(key), 0.0, 60, allowed, None,
         fallback, enabled, when, when),
    )  # fmt: skip
    return tenant_id


def go_record(url: str, tenant_id: str, request_id: str, cost: float = 0.5) -> int:
    return go(
        url,
        GO_RECORD_USAGE,
        (tenant_id, request_id, "gpt-4o", "openai", 10, 20, cost, False, 7,
         "success", NOW),
    )  # fmt: skip


@pytest.fixture
def tenants(pool: ConnectionPool) -> PostgresTenantRepository:
    return PostgresTenantRepository(pool, clock=FakeClock(NOW + timedelta(hours=1)))


@pytest.fixture
def usage(pool: ConnectionPool) -> PostgresUsageRepository:
    return PostgresUsageRepository(pool)


def comparable(tenant: Tenant) -> Tenant:
    """`tenant` without the fields each store stamps from its own clock."""
    return replace(tenant, created_at=None, updated_at=None)


# -- tenants -----------------------------------------------------------------------


def test_go_creates_a_tenant_with_nil_slices(
    clean_db: str, tenants: PostgresTenantRepository
) -> None:
    tenant_id = go_create(clean_db, key="go-key-1")
    stored = go(clean_db, GO_GET_BY_API_KEY, (hash_api_key("go-key-1"),))
    assert stored == 1  # the Go service finds what it wrote

    found = tenants.get_by_api_key("go-key-1")
    assert found.id == tenant_id
    assert (found.allowed_models, found.fallback_providers) == ((), ())
    assert (found.created_at, found.updated_at) == (NOW, NOW)

    # The in-memory backend, given the same tenant, reads it the same way.
    memory = InMemoryTenantRepository()
    memory.create(replace(found, created_at=None, updated_at=None))
    assert comparable(memory.get_by_api_key("go-key-1")) == comparable(found)


def test_null_array_elements_are_dropped(
    clean_db: str, tenants: PostgresTenantRepository
) -> None:
    go_create(clean_db, key="k", allowed=["gpt-4o", None, "claude"], fallback=[None])
    found = tenants.get_by_api_key("k")
    assert found.allowed_models == ("gpt-4o", "claude")
    assert found.fallback_providers == ()
    memory = InMemoryTenantRepository()
    memory.create(replace(found, created_at=None, updated_at=None))
    assert comparable(memory.get_by_api_key("k")) == comparable(found)


def test_every_null_becomes_the_default_and_enabled_null_is_refused(
    clean_db: str, tenants: PostgresTenantRepository
) -> None:
    tenant_id = str(uuid.uuid4())
    # What psql (or any writer) may send: NULL in every column 002 made NOT NULL.
    assert (
        go(
            clean_db,
            GO_INSERT_TENANT,
            (
                tenant_id,
                "nulls",
                hash_api_key("nk"),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ),
        )
        == 1
    )
    with psycopg.connect(clean_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT budget_usd, rate_limit_rpm, allowed_models, fallback_providers,"
            " enabled, created_at IS NOT NULL, updated_at = created_at"
            " FROM tenants WHERE id = %s",
            (tenant_id,),
        ).fetchone()
    assert row == (Decimal("0.00"), 60, [], [], False, True, True)
    # Fail closed: neither service authenticates it.
    assert go(clean_db, GO_GET_BY_API_KEY, (hash_api_key("nk"),)) == 0
    with pytest.raises(TenantNotFound):
        tenants.get_by_api_key("nk")
    assert tenants.get_by_id(tenant_id).enabled is False

    # And an UPDATE writing NULLs gets the same treatment.
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenants SET enabled = true, allowed_models = NULL,"
            " rate_limit_rpm = NULL, created_at = NULL WHERE id = %s",
            (tenant_id,),
        )
        conn.execute("UPDATE tenants SET enabled = NULL WHERE id = %s", (tenant_id,))
    after = tenants.get_by_id(tenant_id)
    assert (after.enabled, after.allowed_models, after.rate_limit_rpm) == (
        False,
        (),
        60,
    )
    assert after.created_at is not None


def test_a_go_update_moves_updated_at_so_a_stale_update_fails(
    clean_db: str, tenants: PostgresTenantRepository
) -> None:
    tenant_id = go_create(clean_db, key="uk")
    read = tenants.get_by_id(tenant_id)
    # The Go service's Update with its own clock behind ours (updated_at unchanged),
    # then a psql UPDATE that does not mention updated_at at all.
    go(
        clean_db,
        GO_UPDATE_TENANT,
        (tenant_id, "renamed by go", read.api_key_hash, 5.0, 60, None, None, None,
         True, read.updated_at),
    )  # fmt: skip
    first = tenants.get_by_id(tenant_id)
    assert first.name == "renamed by go"
    assert first.updated_at is not None
    assert read.updated_at is not None
    assert first.updated_at > read.updated_at
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET budget_usd = 7 WHERE id = %s", (tenant_id,))
        # An UPDATE that changes nothing is no change: updated_at stays.
        conn.execute("UPDATE tenants SET name = name WHERE id = %s", (tenant_id,))
    second = tenants.get_by_id(tenant_id)
    assert second.updated_at is not None
    assert second.updated_at > first.updated_at
    assert second.budget_usd == Decimal("7.00")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET name = name WHERE id = %s", (tenant_id,))
    assert tenants.get_by_id(tenant_id).updated_at == second.updated_at

    # Our optimistic update of what we read before the Go service's change fails,
    # so the Go service's change is not overwritten.
    with pytest.raises(Conflict):
        tenants.update(replace(read, rate_limit_rpm=99))
    assert tenants.get_by_id(tenant_id).name == "renamed by go"
    # Of what is current, it applies.
    assert tenants.update(replace(second, rate_limit_rpm=99)).rate_limit_rpm == 99


# -- usage -------------------------------------------------------------------------


def test_a_retried_go_request_is_stored_once_without_error(
    clean_db: str, usage: PostgresUsageRepository
) -> None:
    tenant_id = go_create(clean_db, key="rk")
    assert go_record(clean_db, tenant_id, "req-1") == 1
    assert go_record(clean_db, tenant_id, "req-1", cost=9.0) == 0  # skipped, no error
    since = NOW - timedelta(days=1)
    stored = usage.get_tenant_usage(tenant_id, since)
    assert [(r.request_id, r.cost_usd) for r in stored] == [("req-1", Decimal("0.5"))]
    assert usage.get_tenant_total_cost(tenant_id, since) == Decimal("0.5")
    # Our idempotent record agrees: a repeat is "already recorded".
    repeat = UsageRecord(
        tenant_id=tenant_id, request_id="req-1", model="m", provider="p", timestamp=NOW
    )
    assert usage.record(repeat) is False
    assert usage.record(replace(repeat, request_id="req-2")) is True
    assert go_record(clean_db, tenant_id, "req-2") == 0
    with psycopg.connect(clean_db, autocommit=True) as conn:
        totals = conn.execute(
            "SELECT sum(records), sum(cost_usd) FROM usage_daily_totals"
            " WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchall()
    assert totals == [(2, Decimal("0.5"))]  # every model and shard of the day

    # The in-memory backend reads the same records the same way.
    memory_tenants = InMemoryTenantRepository()
    memory_usage = InMemoryUsageRepository(memory_tenants)
    memory_tenants.create(Tenant(id=tenant_id, name="go", api_key_hash="a" * 64))
    for record in usage.get_tenant_usage(tenant_id, since):
        assert memory_usage.record(record) is True
        assert memory_usage.record(record) is False
    assert memory_usage.get_tenant_usage(tenant_id, since) == usage.get_tenant_usage(
        tenant_id, since
    )
    assert memory_usage.get_tenant_total_cost(
        tenant_id, since
    ) == usage.get_tenant_total_cost(tenant_id, since)


def test_a_request_repeated_within_one_statement_is_stored_once(
    clean_db: str,
) -> None:
    tenant_id = go_create(clean_db, key="mk")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        inserted = conn.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
            " cost_usd) VALUES (%s, 'x', 'm', 'p', 1), (%s, 'x', 'm', 'p', 2),"
            " (%s, 'y', 'm', 'p', 3)",
            (tenant_id, tenant_id, tenant_id),
        )
        assert inserted.rowcount == 2
        with conn.cursor().copy(
            "COPY usage_records (tenant_id, request_id, model, provider, cost_usd)"
            " FROM STDIN"
        ) as copy:
            for request_id in ("y", "z", "z"):
                copy.write_row((tenant_id, request_id, "m", "p", 4))
        stored = conn.execute(
            "SELECT request_id, cost_usd FROM usage_records WHERE tenant_id = %s"
            " ORDER BY 1",
            (tenant_id,),
        ).fetchall()
        totals = conn.execute(
            "SELECT sum(records), sum(cost_usd) FROM usage_daily_totals"
            " WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchone()
    assert [(r, int(c)) for r, c in stored] == [("x", 1), ("y", 3), ("z", 4)]
    assert totals == (3, Decimal("8.0000000000"))


def test_two_concurrent_plain_inserts_of_one_request_store_one(clean_db: str) -> None:
    tenant_id = go_create(clean_db, key="ck")
    with (
        psycopg.connect(clean_db) as first,
        psycopg.connect(clean_db, autocommit=True) as second,
        psycopg.connect(clean_db, autocommit=True) as watcher,
    ):
        with psycopg.RawCursor(first) as cur:  # in a transaction, not committed
            cur.execute(
                GO_RECORD_USAGE,
                (tenant_id, "same", "m", "p", 1, 1, 0.1, False, 1, "success", NOW),
            )
        pid = second.info.backend_pid
        outcome: list[BaseException | int] = []

        def insert() -> None:
            try:
                with psycopg.RawCursor(second) as cur:
                    cur.execute(
                        GO_RECORD_USAGE,
                        (tenant_id, "same", "m", "p", 1, 1, 0.2, False, 1, "success",
                         NOW),
                    )  # fmt: skip
                    outcome.append(cur.rowcount)
            except psycopg.Error as exc:
                outcome.append(exc)

        thread = threading.Thread(target=insert)
        thread.start()

        def waits_for_a_lock() -> bool:
            row = watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            return row is not None and row[0] == "Lock"

        # The second insert passed the repeat check (the first is not committed)
        # and now waits on the unique index for the first to end.
        wait_until(waits_for_a_lock, "the second insert to wait for the first")
        first.commit()
        thread.join(timeout=30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], psycopg.errors.UniqueViolation)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        stored = conn.execute(
            "SELECT cost_usd FROM usage_records WHERE tenant_id = %s", (tenant_id,)
        ).fetchall()
    assert stored == [(Decimal("0.1000000000"),)]


def test_costs_keep_ten_places_whoever_writes_them(
    clean_db: str, usage: PostgresUsageRepository
) -> None:
    tenant_id = go_create(clean_db, key="ck")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
            " cost_usd, input_tokens, cached, status, created_at)"
            " VALUES (%s, 'a', 'm', 'p', 0.000000000049, NULL, NULL, NULL, %s),"
            "        (%s, 'b', 'm', 'p', 0.00000000015, 1, true, 'ok', %s),"
            "        (%s, 'c', 'm', 'p', NULL, 1, true, 'ok', %s)",
            (tenant_id, NOW, tenant_id, NOW, tenant_id, NOW),
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
                " cost_usd) VALUES (%s, 'd', 'm', 'p', 10000000000)",
                (tenant_id,),
            )
    got = {
        r.request_id: r for r in usage.get_tenant_usage(tenant_id, NOW - timedelta(1))
    }
    assert got["a"].cost_usd == Decimal("0E-10")
    assert (got["a"].input_tokens, got["a"].cached, got["a"].status) == (
        0,
        False,
        "success",
    )
    assert got["b"].cost_usd == Decimal("2E-10")  # half away from zero
    assert got["c"].cost_usd == 0


# -- search_path -------------------------------------------------------------------


def test_triggers_find_their_own_tables_whatever_the_writer_search_path(
    pg_server_url: str,
) -> None:
    with scratch_db(pg_server_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA app")
            # Decoys a writer's search_path could otherwise send the triggers to.
            conn.execute("CREATE TABLE public.usage_daily_totals (x int)")
            conn.execute("CREATE TABLE public.usage_records (x int)")
        in_app = psycopg.conninfo.make_conninfo(url, options="-csearch_path=app")
        assert migrate.up(in_app)[-1] == migrate.available()[-1].version
        with psycopg.connect(url, autocommit=True) as writer:
            writer.execute("SET search_path = public")
            writer.execute("CREATE TEMP TABLE usage_records (x int)")
            tenant_id = str(uuid.uuid4())
            writer.execute(
                "INSERT INTO app.tenants (id, name, api_key_hash, allowed_models)"
                " VALUES (%s, 't', %s, NULL)",
                (tenant_id, "f" * 64),
            )
            for _ in range(2):
                writer.execute(
                    "INSERT INTO app.usage_records (tenant_id, request_id, model,"
                    " provider, cost_usd, created_at) VALUES (%s, 'r', 'm', 'p', 1.5,"
                    " %s)",
                    (tenant_id, NOW),
                )
            totals = writer.execute(
                "SELECT sum(records), sum(cost_usd) FROM app.usage_daily_totals"
            ).fetchall()
            assert totals == [(1, Decimal("1.5000000000"))]
            assert writer.execute(
                "SELECT allowed_models FROM app.tenants"
            ).fetchall() == [([],)]
            assert writer.execute(
                "SELECT count(*) FROM public.usage_records"
            ).fetchone() == (0,)
        with psycopg.connect(url, autocommit=True) as conn:
            settings = conn.execute(
                sql.SQL(
                    "SELECT proname, proconfig FROM pg_proc"
                    " WHERE proname LIKE 'tenantstore%' ORDER BY 1"
                )
            ).fetchall()
        assert settings
        for name, config in settings:
            assert config is not None, name
            assert any(
                c.startswith("search_path=pg_catalog") and c.endswith("pg_temp")
                for c in config
            ), name


# -- the daily totals' locks (issue 9, item 9) -------------------------------------


def test_updates_moving_rows_between_two_days_never_deadlock(clean_db: str) -> None:
    tenant_id = go_create(clean_db, key="dk")
    day_a, day_b = NOW, NOW + timedelta(days=1)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for request_id, when in (("r1", day_a), ("r2", day_b)):
            conn.execute(
                "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
                " cost_usd, created_at) VALUES (%s, %s, 'm', 'p', 1, %s)",
                (tenant_id, request_id, when),
            )
    rounds = 150
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def mover(request_id: str, start: datetime, other: datetime) -> None:
        try:
            with psycopg.connect(clean_db, autocommit=True) as conn:
                for n in range(rounds):
                    # r1 moves a->b while r2 moves b->a, then both move back.
                    target = other if n % 2 == 0 else start
                    barrier.wait()
                    with conn.transaction():
                        conn.execute(
                            "UPDATE usage_records SET created_at = %s"
                            " WHERE tenant_id = %s AND request_id = %s",
                            (target, tenant_id, request_id),
                        )
                        conn.execute("SELECT pg_sleep(0.001)")
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=mover, args=("r1", day_a, day_b)),
        threading.Thread(target=mover, args=("r2", day_b, day_a)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [e for e in errors if isinstance(e, psycopg.errors.DeadlockDetected)]
    assert errors == []
    with psycopg.connect(clean_db, autocommit=True) as conn:
        totals = conn.execute(
            # Every model and shard of a day, summed (a shard may go negative).
            "SELECT day, sum(records), sum(cost_usd) FROM usage_daily_totals"
            " WHERE tenant_id = %s GROUP BY day HAVING sum(records) <> 0"
            " ORDER BY day",
            (tenant_id,),
        ).fetchall()
        by_rows = conn.execute(
            "SELECT (created_at AT TIME ZONE 'UTC')::date, count(*), sum(cost_usd)"
            " FROM usage_records WHERE tenant_id = %s GROUP BY 1 ORDER BY 1",
            (tenant_id,),
        ).fetchall()
    assert totals == by_rows
