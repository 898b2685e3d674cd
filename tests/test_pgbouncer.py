"""The library through a real PgBouncer in transaction mode (tests/fix_pgbouncer.py).

The contract suite (tests/test_contract.py) runs here again, every test that takes
its `stores`, on pools of `create_pool` / `create_async_pool` pointed at PgBouncer,
with the repositories' defaults; then what the contract suite does not cover
(batches, summaries, admin users, the writer, budgets), from several threads and
tasks at once on more client connections than PgBouncer has server connections;
and the two parts that cannot work through it, the listener and the migration
runner, refusing with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import tests.test_contract as contract
from tenantstore import (
    AsyncCachedTenantRepository,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    AsyncTenantCacheListener,
    BudgetExceeded,
    BudgetGuard,
    CachedTenantRepository,
    InvalidInput,
    PostgresAdminUserRepository,
    PostgresTenantRepository,
    PostgresUsageRepository,
    RecordOutcome,
    TenantCacheListener,
    UsageWriter,
    create_async_pool,
    create_pool,
    migrate,
)
from tenantstore.cli import main
from tests.fix_backends import FakeClock, Synced
from tests.fix_pgbouncer import POOL_SIZE, PgBouncer
from tests.pgserver import scratch_database
from tests.polling import DEADLINE, wait_until
from tests.test_cli_tenant import CliRunner
from tests.test_contract import CIPHER, T0, Stores, new_tenant, usage

# The contract suite's tests, collected here too: `stores` below (PgBouncer) takes
# the place of test_contract's for each of them. Not those whose cases are values
# rejected at the domain boundary before any statement is sent (they are the same
# code on every backend, and would double this file's running time for nothing).
_BOUNDARY = {
    "test_bad_tenant_field_is_named_and_nothing_written",
    "test_bad_usage_field_is_named_and_nothing_written",
    "test_set_enabled_takes_a_bool_only",
    "test_usage_of_a_non_str_id_is_simply_none",
}
for _name, _test in inspect.getmembers(contract, inspect.isfunction):
    if (
        _name.startswith("test_")
        and _name not in _BOUNDARY
        and "stores" in inspect.signature(_test).parameters
    ):
        globals()[_name] = _test
del _name, _test


@pytest.fixture
def bouncer_url(pgbouncer: PgBouncer, clean_db: str) -> str:
    """`clean_db` through PgBouncer."""
    return pgbouncer.url(clean_db)


@pytest.fixture(params=["pgbouncer", "pgbouncer-async"])
def stores(
    request: pytest.FixtureRequest, bouncer_url: str, clean_db: str
) -> Iterator[Stores]:
    clock = FakeClock(T0)
    if request.param == "pgbouncer":
        with create_pool(bouncer_url, min_size=1, max_size=4) as pool:
            yield Stores(
                PostgresTenantRepository(pool, clock=clock, cipher=CIPHER),
                PostgresUsageRepository(pool, clock=clock),
                clock,
                clean_db,
            )
        return
    runner: asyncio.Runner = request.getfixturevalue("runner")
    apool = runner.run(_async_pool(bouncer_url, 4))
    try:
        yield Stores(
            Synced(
                AsyncPostgresTenantRepository(apool, clock=clock, cipher=CIPHER), runner
            ),
            Synced(AsyncPostgresUsageRepository(apool, clock=clock), runner),
            clock,
            clean_db,
        )
    finally:
        runner.run(apool.close())


async def _async_pool(url: str, size: int) -> Any:
    return await create_async_pool(url, min_size=1, max_size=size)


def _connections(pgbouncer: PgBouncer, direct: str, kind: str) -> int:
    """How many CLIENTS or SERVERS PgBouncer has for `direct`'s database, from its
    admin console (which speaks the simple query protocol only: raw libpq)."""
    params = conninfo_to_dict(pgbouncer.url(direct))
    database, params["dbname"] = params["dbname"], "pgbouncer"
    with psycopg.connect(make_conninfo("", **params), autocommit=True) as conn:
        result = conn.pgconn.exec_(f"SHOW {kind}".encode())
        names = [result.fname(col) for col in range(result.nfields)]
        column = names.index(b"database")
        return sum(
            result.get_value(row, column) == str(database).encode()
            for row in range(result.ntuples)
        )


# -- many clients on few server connections ------------------------------------


def test_threads_share_few_server_connections_with_the_defaults(
    pgbouncer: PgBouncer, bouncer_url: str, clean_db: str
) -> None:
    threads, rounds = 8, 40
    with create_pool(bouncer_url, min_size=threads, max_size=threads) as pool:
        tenants = PostgresTenantRepository(pool)
        usage_repo = PostgresUsageRepository(pool)
        made = [new_tenant(name=f"t{i}") for i in range(threads)]
        for tenant, _ in made:
            tenants.create(tenant)
        wait_until(
            lambda: pool.get_stats().get("pool_size", 0) == threads,
            "the pool holds all its connections",
        )
        errors: list[BaseException] = []

        def work(index: int) -> None:
            tenant, key = made[index]
            try:
                for n in range(rounds):
                    assert tenants.get_by_api_key(key).id == tenant.id
                    assert usage_repo.record(usage(tenant.id, f"r{n}"))
                    assert not usage_repo.record(usage(tenant.id, f"r{n}"))
                total = usage_repo.get_tenant_total_cost(tenant.id, T0)
                assert total == Decimal("0.0000001") * rounds
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(DEADLINE)
        assert errors == []
        # Eight clients, at most POOL_SIZE server connections: shared, really.
        assert _connections(pgbouncer, clean_db, "CLIENTS") >= threads
        assert 1 <= _connections(pgbouncer, clean_db, "SERVERS") <= POOL_SIZE


def test_async_tasks_share_few_server_connections(
    bouncer_url: str, runner: asyncio.Runner
) -> None:
    async def main() -> None:
        pool = await create_async_pool(bouncer_url, min_size=6, max_size=6)
        try:
            tenants = AsyncPostgresTenantRepository(pool)
            usage_repo = AsyncPostgresUsageRepository(pool)
            made = [new_tenant(name=f"t{i}") for i in range(6)]
            for tenant, _ in made:
                await tenants.create(tenant)

            async def work(tenant: Any, key: str) -> Decimal:
                for n in range(30):
                    assert (await tenants.get_by_api_key(key)).id == tenant.id
                    await usage_repo.record(usage(tenant.id, f"r{n}"))
                return await usage_repo.get_tenant_total_cost(tenant.id, T0)

            totals = await asyncio.gather(*(work(t, k) for t, k in made))
            assert totals == [Decimal("0.0000030")] * 6
        finally:
            await pool.close()

    runner.run(main())


def test_timestamps_come_back_in_utc_whatever_the_server_zone(
    bouncer_url: str,
) -> None:
    # Every server connection of the fixture starts in America/New_York.
    with create_pool(bouncer_url, min_size=1, max_size=2) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant, _ = new_tenant()
        created = tenants.create(tenant)
        for _ in range(10):
            found = tenants.get_by_id(tenant.id)
            assert found.created_at is not None
            assert found.created_at == created.created_at
            assert found.created_at.utcoffset() == timedelta(0)


def test_no_session_setting_is_left_on_the_poolers_server_connections(
    bouncer_url: str,
) -> None:
    with create_pool(bouncer_url, min_size=2, max_size=2, timeout=3) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        tenants.create(tenant)
        for _ in range(10):
            tenants.get_by_api_key(key)
    # Another client of the same pooler: no statement_timeout of ours, and no
    # prepared statement of ours either (another client's names would clash).
    with psycopg.connect(bouncer_url, autocommit=True) as conn:
        for _ in range(2 * POOL_SIZE):
            row = conn.execute(
                "SELECT current_setting('statement_timeout'),"
                " (SELECT count(*) FROM pg_prepared_statements)"
            ).fetchone()
            assert row == ("0", 0)


def test_a_direct_pool_still_prepares(clean_db: str) -> None:
    with create_pool(clean_db, min_size=1, max_size=1) as pool:
        tenants = PostgresTenantRepository(pool)
        tenant, key = new_tenant()
        tenants.create(tenant)
        tenants.get_by_api_key(key)
        with pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
            timeout = conn.execute("SHOW statement_timeout").fetchone()
    assert row is not None
    assert row[0] > 0
    assert timeout == ("5s",)


# -- batches, summaries, admin users, the writer, budgets ----------------------


def test_record_many_and_summaries_through_the_pooler(bouncer_url: str) -> None:
    with create_pool(bouncer_url, min_size=1, max_size=3) as pool:
        tenants = PostgresTenantRepository(pool)
        usage_repo = PostgresUsageRepository(pool)
        tenant, _ = new_tenant()
        tenants.create(tenant)
        batch = [usage(tenant.id, f"b{n}") for n in range(50)]
        # The fast path (COPY straight in), then the careful one (a duplicate
        # and an unknown tenant: COPY into the session's temporary table).
        assert usage_repo.record_many(batch) == [RecordOutcome.INSERTED] * 50
        stranger = usage("00000000-0000-4000-8000-000000000000", "x")
        again = usage_repo.record_many([batch[0], usage(tenant.id, "new"), stranger])
        assert again == [
            RecordOutcome.DUPLICATE,
            RecordOutcome.INSERTED,
            RecordOutcome.UNKNOWN_TENANT,
        ]
        for _ in range(2 * POOL_SIZE):  # on each server connection, whichever
            outcome = usage_repo.record_many([usage(tenant.id, "new")])
            assert outcome == [RecordOutcome.DUPLICATE]
        (summary,) = usage_repo.get_tenant_usage_summary(tenant.id, T0.date())
        assert summary.records == 51
        assert summary.cost_usd == Decimal("0.0000051")
        assert summary.day == T0.date()


def test_admin_users_through_the_pooler(bouncer_url: str) -> None:
    with create_pool(bouncer_url, min_size=1, max_size=2) as pool:
        admins = PostgresAdminUserRepository(pool)
        alice = admins.create("alice", "correct horse", role="admin")
        assert admins.authenticate("alice", "correct horse") == alice
        assert [u.username for u in admins.list()] == ["alice"]


def test_the_writer_flushes_through_the_pooler(bouncer_url: str) -> None:
    with create_pool(bouncer_url, min_size=1, max_size=3) as pool:
        tenants = PostgresTenantRepository(pool)
        usage_repo = PostgresUsageRepository(pool)
        tenant, _ = new_tenant()
        tenants.create(tenant)
        with UsageWriter(usage_repo, max_batch=40) as writer:
            for n in range(300):
                writer.submit(usage(tenant.id, f"w{n}"))
            writer.submit(usage(tenant.id, "w0"))  # again: stored once
            writer.flush(DEADLINE)
            stats = writer.stats()
        assert stats.written + stats.duplicates == 301
        assert (stats.pending, stats.rejected) == (0, 0)
        assert usage_repo.get_tenant_total_cost(tenant.id, T0) == Decimal("0.00003")


def test_budgets_through_the_pooler(bouncer_url: str) -> None:
    now = datetime.now(UTC)
    with create_pool(bouncer_url, min_size=1, max_size=4) as pool:
        tenants = PostgresTenantRepository(pool)
        usage_repo = PostgresUsageRepository(pool)
        tenant = tenants.create(new_tenant(budget_usd="1.00")[0])
        guard = BudgetGuard(tenants, usage_repo)
        first = guard.reserve(tenant, Decimal("0.60"))
        assert first.settle(usage(tenant.id, "b1", cost_usd="0.50", timestamp=now))
        held = guard.reserve(tenant, Decimal("0.30"))
        with pytest.raises(BudgetExceeded):
            guard.reserve(tenant, Decimal("0.21"))
        held.release()
        status = guard.status(tenant)
        assert status.spent_usd == Decimal("0.50")
        assert status.remaining_usd == Decimal("0.50")
        # Two guards (two processes' worth of holds) through the same pooler.
        other = BudgetGuard(tenants, usage_repo)
        grants = 0
        for _ in range(10):
            for one in (guard, other):
                try:
                    one.reserve(tenant, Decimal("0.05"))
                except BudgetExceeded:
                    continue
                grants += 1
        assert grants == 10  # 0.50 left: exactly ten holds of 0.05


# -- what needs one session refuses, and says what to do -----------------------


def test_the_listener_refuses_the_pooler_and_asks_for_a_direct_url(
    bouncer_url: str,
) -> None:
    with create_pool(bouncer_url, min_size=1, max_size=2) as pool:
        cache = CachedTenantRepository(PostgresTenantRepository(pool))
        with TenantCacheListener(bouncer_url, cache) as listener:
            with pytest.raises(InvalidInput) as caught:
                listener.wait_connected(DEADLINE)
            assert not listener.connected
    assert caught.value.field == "conninfo"
    message = str(caught.value)
    assert "PgBouncer" in message
    assert "direct" in message
    assert "listen_url" in message


def test_the_async_listener_refuses_the_pooler(
    bouncer_url: str, runner: asyncio.Runner
) -> None:
    async def main() -> None:
        pool = await create_async_pool(bouncer_url, min_size=1, max_size=2)
        try:
            cache = AsyncCachedTenantRepository(AsyncPostgresTenantRepository(pool))
            async with AsyncTenantCacheListener(bouncer_url, cache) as listener:
                with pytest.raises(InvalidInput, match="direct"):
                    await listener.wait_connected(DEADLINE)
        finally:
            await pool.close()

    runner.run(main())


def test_a_listener_on_the_direct_url_beside_a_pooled_pool_works(
    bouncer_url: str, clean_db: str
) -> None:
    with create_pool(bouncer_url, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        cache = CachedTenantRepository(repo)
        with TenantCacheListener(clean_db, cache) as listener:
            assert listener.wait_connected(DEADLINE)
            made, key = new_tenant()
            tenant = repo.create(made)
            assert cache.get_by_api_key(key) == tenant
            repo.set_enabled(tenant.id, False)
            wait_until(
                lambda: listener.notifications >= 2, "the change reaches the cache"
            )
            with pytest.raises(LookupError):
                cache.get_by_api_key(key)


def test_migrate_refuses_the_pooler_and_asks_for_a_direct_url(
    pgbouncer: PgBouncer,
) -> None:
    with scratch_database() as direct:
        url = pgbouncer.url(direct)
        for run in (migrate.up, migrate.down, lambda u: migrate.force(u, None)):
            with pytest.raises(InvalidInput) as caught:
                run(url)
            assert caught.value.field == "conninfo"
            assert "PgBouncer" in str(caught.value)
            assert "direct" in str(caught.value)
        # Nothing was done: no schema_migrations, no table.
        assert migrate.status(direct).version is None
        with psycopg.connect(direct) as conn:
            row = conn.execute("SELECT to_regclass('tenants')").fetchone()
        assert row == (None,)
        # status only reads: it answers through the pooler.
        assert migrate.status(url).version is None


def test_the_migrate_command_refuses_the_pooler(
    pgbouncer: PgBouncer, capsys: pytest.CaptureFixture[str]
) -> None:
    with scratch_database() as direct:
        url = pgbouncer.url(direct)
        assert main(["migrate", "up", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "PgBouncer" in err
    assert "direct" in err


def test_the_tenant_commands_work_through_the_pooler(
    bouncer_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = CliRunner(bouncer_url, capsys)
    tenant_id, key = cli.create("--name", "Acme")
    assert cli("tenant", "disable", tenant_id).status == 0
    listed = cli("tenant", "list", "--json")
    assert listed.status == 0
    assert [(t["id"], t["enabled"]) for t in json.loads(listed.out)] == [
        (tenant_id, False)
    ]
    assert key not in listed.out
