"""The budget guard: a reservation from the held share, a settle, and four processes.

`budget-reserve` times `reserve` + `release` from a share the guard already holds
(what the guard adds to a request: no I/O), in batches, against the floor of a
cached key lookup (SHA-256 + `dict.get`, target ≤ 3x), and against what a gateway
does today to enforce a budget before the request: `get_tenant_total_cost` for the
month on every request (one query).

`budget-settle` times `reserve` + `settle` (while the tenant is not short, the
settle is a plain usage insert: the lease row is rebased at the next lease step)
against the hand-written INSERT of the same record, and against today's
read-then-record (`get_tenant_total_cost`, then `record`).

`budget-contended` runs 4 processes of 8 threads (tests/budget_worker.py) spending
one tenant's budget until it is refused, once with the guard and once the way a
gateway does it today; a sample is the wall time per reservation of the whole run
(one run each: the figure is repeated), and the notes give reservations per second,
database round trips per 1,000 reservations and, for today's way, the overspend.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.measure import (
    CheckFailed,
    Sampled,
    Series,
    Target,
    Variant,
    batched,
    per_call,
)
from benchmarks.scenario import (
    Context,
    Scenario,
    batches,
    cycle,
    floor_lookup,
    looped,
)
from tenantstore import (
    BudgetGuard,
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    UsageRecord,
    _sql,
    create_pool,
    generate_api_key,
    hash_api_key,
)

__all__ = ["SCENARIOS"]

RESERVE_TARGET = Target(3.0, "≤ 3.00x")
ESTIMATE = Decimal("0.0100")
ROOT = Path(__file__).resolve().parents[1]


def _month() -> datetime:
    return datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@contextlib.contextmanager
def _tenant(pool: Any, budget: Decimal) -> Iterator[Tenant]:
    tenants = PostgresTenantRepository(pool)
    tenant = tenants.create(
        Tenant(
            name="budget-bench",
            api_key_hash=hash_api_key(generate_api_key()),
            budget_usd=budget,
        )
    )
    try:
        yield tenant
    finally:
        tenants.delete(tenant.id)  # cascades its usage and leases


def _guard(pool: Any) -> BudgetGuard:
    # A lease longer than the run and no worker: every timed call is answered
    # from the share the warm-up took.
    return BudgetGuard(
        PostgresTenantRepository(pool),
        PostgresUsageRepository(pool),
        lease_time=86_400.0,
        renew_interval=None,
    )


@contextlib.contextmanager
def budget_reserve(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    with (
        create_pool(lookup.url) as pool,
        _tenant(pool, Decimal("99999999.99")) as tenant,
        contextlib.closing(_guard(pool)) as guard,
    ):
        usage = PostgresUsageRepository(pool)
        month = _month()
        keys = lookup.tenants.keys[: min(1_000, len(lookup.tenants.keys))]
        table = {t.api_key_hash: t for t in lookup.tenants.by_key.values()}
        cut = batches(keys, ctx.batch)
        reserve, estimate = guard.reserve, ESTIMATE

        def reserve_release(keys: Sequence[str]) -> list[Any]:
            out: list[Any] = []
            append = out.append
            for _ in keys:
                reservation = reserve(tenant, estimate)
                reservation.release()
                append(reservation)
            return out

        def check_reserved(_: str, result: Any) -> None:
            if result.estimate_usd != estimate or result.tenant_id != tenant.id:
                raise CheckFailed(f"not a reservation of this tenant: {result!r}")

        def check_tenant(key: str, result: Any) -> None:
            if result is None or result.id != lookup.tenants.by_key[key].id:
                raise CheckFailed("the floor found another tenant")

        def check_total(_: object, total: Any) -> None:
            if total != 0:
                raise CheckFailed(f"this month's total is {total}, not 0")

        reserve_release(keys[:1])  # takes the share
        yield [
            Variant(
                "BudgetGuard.reserve + release, from the held share",
                "ours",
                batched(reserve_release, cut, check_reserved),
                note="in process, no I/O",
            ),
            Variant(
                "floor: sha256(key) + dict.get (a cached key lookup)",
                "floor",
                batched(looped(floor_lookup(table)), cut, check_tenant),
                target=RESERVE_TARGET,
            ),
            Variant(
                "today: get_tenant_total_cost for the month, every request",
                "reference",
                per_call(
                    lambda _: usage.get_tenant_total_cost(tenant.id, month),
                    cycle([None]),
                    check_total,
                ),
                note="one query; and still races other requests",
            ),
        ]


def _record(tenant_id: str, prefix: str) -> Any:
    numbers = itertools.count()

    def make(_: int) -> UsageRecord:
        return UsageRecord(
            tenant_id=tenant_id,
            request_id=f"{prefix}-{next(numbers):09d}",
            model="gpt-4o-mini",
            provider="openai",
            input_tokens=1200,
            output_tokens=350,
            cost_usd=Decimal("0.0039300000"),
            latency_ms=840,
        )

    return make


def _check_true(_: object, result: Any) -> None:
    if result is not True and result != 1:
        raise CheckFailed(f"the record was not inserted ({result!r})")


@contextlib.contextmanager
def budget_settle(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    with (
        create_pool(lookup.url) as pool,
        _tenant(pool, Decimal("99999999.99")) as tenant,
        contextlib.closing(_guard(pool)) as guard,
    ):
        usage = PostgresUsageRepository(pool)
        month = _month()

        def ours(record: UsageRecord) -> bool:
            return guard.reserve(tenant, ESTIMATE).settle(record)

        def floor(record: UsageRecord) -> int:
            params = {
                "tenant_id": record.tenant_id,
                "request_id": record.request_id,
                "model": record.model,
                "provider": record.provider,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
                "cost_usd": record.cost_usd,
                "cached": record.cached,
                "latency_ms": record.latency_ms,
                "status": record.status,
                "created_at": datetime.now(UTC),
            }
            with pool.connection() as conn:
                return conn.execute(_sql.INSERT_USAGE, params, prepare=True).rowcount

        def today(record: UsageRecord) -> bool:
            usage.get_tenant_total_cost(tenant.id, month)
            return usage.record(record)

        guard.reserve(tenant, ESTIMATE).release()  # takes the share
        yield [
            Variant(
                "BudgetGuard.reserve + settle",
                "ours",
                per_call(ours, _record(tenant.id, "ours"), _check_true),
                note="a plain insert (the lease row waits for the next step)",
            ),
            Variant(
                "hand-written INSERT of the record, same pool",
                "floor",
                per_call(floor, _record(tenant.id, "floor"), _check_true),
                note="records, enforces nothing",
            ),
            Variant(
                "today: get_tenant_total_cost, then record",
                "reference",
                per_call(today, _record(tenant.id, "today"), _check_true),
                note="two round trips, and races",
            ),
        ]


def _repeated(figure: float) -> Series:
    def series(n: int) -> Sampled:
        return Sampled([figure] * n, [0.0] * n, n)

    return series


def _contend(url: str, tenant_id: str, mode: str, go: Path) -> dict[str, float]:
    """Run 4 worker processes of 8 threads until the tenant is refused."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.budget_worker",
                url,
                tenant_id,
                f"{mode}{i}",
                "8",
                "10",
                mode,
                str(go),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            while (line := child.stdout.readline()) and line.strip() != "ready":
                pass
        go.touch()
        outputs = [child.communicate(timeout=300)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        go.unlink(missing_ok=True)
    if any(child.returncode for child in children):
        raise CheckFailed(f"a {mode} worker failed")
    starts, ends, made, trips, steps = [], [], 0, 0, 0
    for out in outputs:
        for line in out.splitlines():
            word, *rest = line.split()
            if word == "start":
                starts.append(float(rest[0]))
            elif word == "end":
                ends.append(float(rest[0]))
            elif word == "stats":
                made += int(rest[0])
                trips += int(rest[1])
                steps += int(rest[2])
    if len(starts) != 4 or len(ends) != 4 or made == 0:
        raise CheckFailed(f"the {mode} workers did not report")
    return {
        "seconds": max(ends) - min(starts),
        "reservations": made,
        "trips": trips if mode == "guard" else 2 * made,
        "steps": steps,
        "start": min(starts),
    }


@contextlib.contextmanager
def budget_contended(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    budget = Decimal("30.00") if ctx.sizes.tenants >= 10_000 else Decimal("3.00")
    runs: dict[str, dict[str, float]] = {}
    overspent: dict[str, Decimal] = {}
    with create_pool(lookup.url, min_size=1, max_size=2) as pool:
        for mode in ("guard", "today"):
            with _tenant(pool, budget) as tenant:
                ctx.data.progress.step(f"budget-contended: 4 processes, {mode}")
                go = ROOT / f".budget-go-{os.getpid()}-{mode}"
                runs[mode] = _contend(lookup.url, tenant.id, mode, go)
                with psycopg.connect(lookup.url, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT coalesce(sum(cost_usd), 0) FROM usage_records"
                        " WHERE tenant_id = %s",
                        (tenant.id,),
                    ).fetchone()
                    # When 90 % of the budget was spent, and by how many requests:
                    # the rate before the end, where refusals wait to be exact.
                    ninety = conn.execute(
                        "SELECT created_at, n FROM (SELECT created_at, count(*)"
                        " OVER w AS n, sum(cost_usd) OVER w AS s FROM usage_records"
                        " WHERE tenant_id = %s WINDOW w AS (ORDER BY created_at,"
                        " request_id)) t WHERE s >= %s ORDER BY created_at LIMIT 1",
                        (tenant.id, budget * Decimal("0.9")),
                    ).fetchone()
                assert row is not None
                assert ninety is not None
                overspent[mode] = max(Decimal(0), row[0] - budget)
                seconds = ninety[0].timestamp() - runs[mode]["start"]
                runs[mode]["rate90"] = ninety[1] / seconds
    if overspent["guard"] != 0:
        raise CheckFailed(f"the guard overspent by {overspent['guard']}")

    def note(mode: str) -> str:
        run = runs[mode]
        per_s = run["reservations"] / run["seconds"]
        per_k = 1000 * run["trips"] / run["reservations"]
        text = (
            f"{int(run['reservations']):,} reservations, {per_s:,.0f}/s "
            f"({run['rate90']:,.0f}/s until 90 % spent), "
            f"{per_k:,.0f} round trips per 1,000"
        )
        if mode == "guard":
            text += f" ({int(run['steps']):,} lease steps)"
        return text + f", overspent ${overspent[mode].quantize(Decimal('0.01'))}"

    def per_reservation(mode: str) -> float:
        return runs[mode]["seconds"] / runs[mode]["reservations"]

    yield [
        Variant(
            "BudgetGuard: 4 processes x 8 threads, reserve + settle",
            "ours",
            _repeated(per_reservation("guard")),
            note=note("guard"),
        ),
        Variant(
            "today: get_tenant_total_cost + record, 4 x 8",
            "reference",
            _repeated(per_reservation("today")),
            note=note("today"),
        ),
    ]


SCENARIOS = (
    Scenario(
        "budget-reserve",
        "budget: reserve + release from a held share, in process",
        budget_reserve,
    ),
    Scenario(
        "budget-settle",
        "budget: reserve + settle (records the usage), PostgreSQL",
        budget_settle,
    ),
    Scenario(
        "budget-contended",
        "budget: 4 processes x 8 threads on one tenant, wall time per reservation",
        budget_contended,
    ),
)
