"""`migrate up` on a database of a million usage rows while the gateway serves.

The Go service filled the database (tests/online_load.py: version 1, NULLs,
duplicates); a loop in another thread keeps authenticating and recording usage
while every migration runs. No timing is asserted (the `migrate-online` benchmark
reports the longest stall): the loop kept making progress, none of its calls
failed, and what it recorded while the migrations ran is counted exactly — once
per request, and in the daily totals that were being added up meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tenantstore import migrate
from tests.online_load import load_go_era, migrate_online
from tests.test_migrate import rows, scratch_db

ROWS = 1_000_000


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
    # The daily totals, added up while the loop kept adding rows, are exact.
    by_rows = rows(
        loaded,
        "SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd),"
        " count(*) FROM usage_records GROUP BY 1, 2 ORDER BY 1, 2",
    )
    by_totals = rows(
        loaded,
        "SELECT tenant_id, day, cost_usd, records FROM usage_daily_totals"
        " WHERE records <> 0 ORDER BY 1, 2",
    )
    assert by_totals == by_rows
    assert len(by_rows) > 1000
