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


class RacingWriters:
    """Three threads, each on its own connection, making `write(conn, rng, name)`
    (one random write) again and again until the block ends; their errors are
    kept in `errors`, and `wait()` returns once they have written 20 more times."""

    def __init__(
        self, url: str, write: Callable[[psycopg.Connection, random.Random, str], None]
    ) -> None:
        self.url = url
        self.write = write
        self.errors: list[BaseException] = []
        self.done = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(seed,)) for seed in range(3)
        ]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                n = 0
                while not self._stop.is_set():
                    n += 1
                    self.write(conn, rng, f"w{seed}-{n}")
                    self.done += 1
        except BaseException as exc:
            self.errors.append(exc)

    def wait(self) -> None:
        before = self.done
        wait_until(
            lambda: self.done > before + 20 or bool(self.errors),
            "the writers to be writing",
        )

    def __enter__(self) -> RacingWriters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


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

        def write(conn: psycopg.Connection, rng: random.Random, name: str) -> None:
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
                        name,
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

        with RacingWriters(url, write) as writers:
            for _ in range(8):  # 010 again and again, with the writers running
                writers.wait()
                assert migrate.up(url, last) == [last]
                assert migrate.down(url) == [last]  # 010's down: nothing to undo
            assert migrate.up(url, last) == [last]
        assert writers.errors == []
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

        def write(conn: psycopg.Connection, rng: random.Random, name: str) -> None:
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
                        name,
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

        with RacingWriters(url, write) as writers:
            for _ in range(4):  # 012 again and again, with the writers running
                writers.wait()
                assert migrate.up(url, shards) == [shards]
                writers.wait()
                assert migrate.down(url) == [shards]
            writers.wait()
            assert migrate.up(url, shards) == [shards]
            writers.wait()
        assert writers.errors == []
        by_rows = rows(url, BY_ROWS)
        assert {model for _, _, model, *_ in by_rows} == {"m", "m2"}
        assert rows(url, BY_TOTALS) == by_rows
        # Nothing of the switch is left: one table, every shard in it.
        assert rows(url, "SELECT to_regclass('usage_totals_shards')") == [(None,)]
