"""`migrate up` on a database of a million usage rows while the gateway serves.

The Go service filled the database (tests/online_load.py: version 1, NULLs,
duplicates); a loop in another thread keeps authenticating and recording usage
while every migration runs. No timing is asserted (the `migrate-online` benchmark
reports the longest stall): the loop kept making progress, none of its calls
failed, and what it recorded while the migrations ran is counted exactly — once
per request, and in the daily totals that were being added up meanwhile. A second
test aims writers at the few (tenant, day) pairs 010 is adding up, inserting,
moving and deleting rows, and checks that the totals still equal the rows; a third
does the same to 012, which rebuilds the totals per model in shards.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tenantstore import migrate
from tests.online_load import load_go_era, migrate_online, tenant_id
from tests.polling import wait_until
from tests.test_migrate import rows, scratch_db

ROWS = 1_000_000

# What the totals (012's: per tenant, UTC day and model, in shards) must equal.
BY_ROWS = (
    "SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, model, sum(cost_usd),"
    " count(*), sum(input_tokens), sum(output_tokens) FROM usage_records"
    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
BY_TOTALS = (
    "SELECT tenant_id, day, model, sum(cost_usd), sum(records), sum(input_tokens),"
    " sum(output_tokens) FROM usage_daily_totals GROUP BY 1, 2, 3"
    " HAVING sum(records) <> 0 ORDER BY 1, 2, 3"
)


@pytest.fixture
def loaded(pg_server_url: str) -> Iterator[str]:
    with scratch_db(pg_server_url) as url:
        assert migrate.up(url, 1) == [1]
        load_go_era(url, ROWS)
        yield url


def test_migrate_up_of_a_million_rows_while_serving(loaded: str) -> None:
    run = migrate_online(loaded)
    assert run.errors == []
    assert run.applied == [m.version for m in migrate.available()][1:]
    assert run.rounds > 0  # it kept serving while the migrations ran

    # Every request the loop recorded is stored, once.
    recorded = {request_id for _, request_id in run.recorded}
    stored = rows(
        loaded,
        "SELECT request_id, count(*) FROM usage_records"
        " WHERE request_id LIKE 'loop-%%' GROUP BY 1",
    )
    assert {r for r, _ in stored} == recorded
    assert {n for _, n in stored} == {1}
    # Old duplicates moved aside: one row per request.
    assert rows(
        loaded,
        "SELECT count(*) - count(DISTINCT (tenant_id, request_id)) FROM usage_records",
    ) == [(0,)]
    # The totals, added up (by 010, then by 012 per model, in shards) while the
    # loop kept adding rows, are exact.
    by_rows = rows(loaded, BY_ROWS)
    assert rows(loaded, BY_TOTALS) == by_rows
    assert len(by_rows) > 1000
    assert {model for _, _, model, *_ in by_rows} == {"gpt-4o", "gpt-4o-mini"}


HOT_TENANTS, HOT_DAYS, HOT_ROWS = 10, 3, 60_000


def load_hot_pairs(url: str) -> None:
    """Few (tenant, day) pairs with many rows each: every write races a batch."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tenants (id, name, api_key_hash)"
            " SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid,"
            "        'hot ' || g, md5(g::text) FROM generate_series(1, %s) AS g",
            (HOT_TENANTS,),
        )
        conn.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
            " cost_usd, created_at)"
            " SELECT ('00000000-0000-0000-0000-'"
            "         || lpad((g %% %s + 1)::text, 12, '0'))::uuid,"
            "        'go-' || g, 'm', 'p', (g %% 997) * 0.000001,"
            "        timestamptz '2025-01-01Z' + (g %% %s) * interval '1 day'"
            " FROM generate_series(1, %s) AS g",
            (HOT_TENANTS, HOT_DAYS, HOT_ROWS),
        )


def test_the_totals_backfill_is_exact_while_rows_are_inserted_moved_and_deleted(
    pg_server_url: str,
) -> None:
    """010 adds up old rows while writers insert, move (UPDATE of created_at, of
    cost) and delete rows of the very (tenant, day) pairs it is adding up."""
    with scratch_db(pg_server_url) as url:
        assert migrate.up(url, 1) == [1]
        load_hot_pairs(url)
        last = next(  # 010: its triggers come first (009), then this backfill
            m.version
            for m in migrate.available()
            if m.name == "usage_daily_totals_backfill"
        )
        assert migrate.up(url, last - 1)[-1] == last - 1  # triggers, no backfill yet
        stop = threading.Event()
        errors: list[BaseException] = []
        done = [0]

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        row = f"go-{rng.randrange(1, HOT_ROWS)}"
                        choice = rng.randrange(4)
                        if choice == 0:
                            conn.execute(
                                "INSERT INTO usage_records (tenant_id, request_id,"
                                " model, provider, cost_usd, created_at) VALUES"
                                " (%s, %s, 'm', 'p', 0.5,"
                                "  timestamptz '2025-01-01Z' + %s * interval '1 day')",
                                (
                                    tenant_id(rng.randrange(HOT_TENANTS) + 1),
                                    f"w{seed}-{n}",
                                    rng.randrange(HOT_DAYS),
                                ),
                            )
                        elif choice == 1:
                            conn.execute(
                                "UPDATE usage_records SET created_at = created_at"
                                " + CASE WHEN created_at < '2025-01-02Z'"
                                " THEN interval '1 day' ELSE interval '-1 day' END"
                                " WHERE request_id = %s",
                                (row,),
                            )
                        elif choice == 2:
                            conn.execute(
                                "UPDATE usage_records SET cost_usd = cost_usd + 1"
                                " WHERE request_id = %s",
                                (row,),
                            )
                        else:
                            conn.execute(
                                "DELETE FROM usage_records WHERE request_id = %s",
                                (row,),
                            )
                        done[0] += 1
            except BaseException as exc:
                errors.append(exc)

        def writing(before: int) -> Callable[[], bool]:
            return lambda: done[0] > before + 20 or bool(errors)

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(8):  # 010 again and again, with the writers running
                wait_until(writing(done[0]), "the writers to be writing")
                assert migrate.up(url, last) == [last]
                assert migrate.down(url) == [last]  # 010's down: nothing to undo
            assert migrate.up(url, last) == [last]
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert errors == []
        by_rows = rows(
            url,
            "SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd),"
            " count(*) FROM usage_records GROUP BY 1, 2 ORDER BY 1, 2",
        )
        by_totals = rows(
            url,
            "SELECT tenant_id, day, cost_usd, records FROM usage_daily_totals"
            " WHERE records <> 0 OR cost_usd <> 0 ORDER BY 1, 2",
        )
        assert by_totals == by_rows


def test_the_sharded_totals_backfill_is_exact_while_rows_are_inserted_moved_and_deleted(
    pg_server_url: str,
) -> None:
    """012 switches the trigger to the shards and adds up the old rows per model
    while writers insert, move (day, model), reprice and delete rows of the very
    (tenant, day, model) groups it is adding up; down and up again, repeatedly."""
    with scratch_db(pg_server_url) as url:
        assert migrate.up(url, 1) == [1]
        load_hot_pairs(url)
        shards = next(
            m.version for m in migrate.available() if m.name == "usage_totals_shards"
        )
        assert migrate.up(url, shards - 1)[-1] == shards - 1  # 009's totals, exact
        stop = threading.Event()
        errors: list[BaseException] = []
        done = [0]

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        row = f"go-{rng.randrange(1, HOT_ROWS)}"
                        choice = rng.randrange(5)
                        if choice == 0:
                            conn.execute(
                                "INSERT INTO usage_records (tenant_id, request_id,"
                                " model, provider, input_tokens, output_tokens,"
                                " cost_usd, created_at) VALUES"
                                " (%s, %s, %s, 'p', 3, 5, 0.5,"
                                "  timestamptz '2025-01-01Z' + %s * interval '1 day')",
                                (
                                    tenant_id(rng.randrange(HOT_TENANTS) + 1),
                                    f"w{seed}-{n}",
                                    rng.choice(("m", "m2")),
                                    rng.randrange(HOT_DAYS),
                                ),
                            )
                        elif choice == 1:
                            conn.execute(
                                "UPDATE usage_records SET created_at = created_at"
                                " + CASE WHEN created_at < '2025-01-02Z'"
                                " THEN interval '1 day' ELSE interval '-1 day' END"
                                " WHERE request_id = %s",
                                (row,),
                            )
                        elif choice == 2:
                            conn.execute(
                                "UPDATE usage_records SET cost_usd = cost_usd + 1,"
                                " input_tokens = input_tokens + 7"
                                " WHERE request_id = %s",
                                (row,),
                            )
                        elif choice == 3:
                            conn.execute(
                                "UPDATE usage_records SET model = CASE model"
                                " WHEN 'm' THEN 'm2' ELSE 'm' END"
                                " WHERE request_id = %s",
                                (row,),
                            )
                        else:
                            conn.execute(
                                "DELETE FROM usage_records WHERE request_id = %s",
                                (row,),
                            )
                        done[0] += 1
            except BaseException as exc:
                errors.append(exc)

        def writing(before: int) -> Callable[[], bool]:
            return lambda: done[0] > before + 20 or bool(errors)

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(4):  # 012 again and again, with the writers running
                wait_until(writing(done[0]), "the writers to be writing")
                assert migrate.up(url, shards) == [shards]
                wait_until(writing(done[0]), "the writers to be writing")
                assert migrate.down(url) == [shards]
            wait_until(writing(done[0]), "the writers to be writing")
            assert migrate.up(url, shards) == [shards]
            wait_until(writing(done[0]), "the writers to be writing")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert errors == []
        by_rows = rows(url, BY_ROWS)
        assert {model for _, _, model, *_ in by_rows} == {"m", "m2"}
        assert rows(url, BY_TOTALS) == by_rows
        # Nothing of the switch is left: one table, every shard in it.
        assert rows(url, "SELECT to_regclass('usage_totals_shards')") == [(None,)]
