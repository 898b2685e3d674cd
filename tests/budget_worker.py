"""A gateway process for tests/test_budget_processes.py: threads spending one budget.

`python -m tests.budget_worker URL TENANT_ID NAME THREADS LEASE_TIME [MODE [GO]]`
runs THREADS threads that reserve an estimate of 1 to 5 cents, settle it at a
random cost of at most the estimate (whole cents), and go on until the tenant is
refused with nothing held anywhere. It prints `holder <id>` first, then `alert
<level>` for every alert its guard fires, and `done <reservations>` at the end; each
line is flushed, so a SIGKILL loses none that were printed.

For the benchmark (benchmarks/scenarios_budget.py): with a GO file, it prints
`ready` and waits for that file to exist before it starts, then prints `start <t>`,
`end <t>` (time.time()) and `stats <reservations> <round trips> <lease steps>`.
MODE `async` runs THREADS asyncio tasks on one loop with `AsyncBudgetGuard`
instead (the same spending, the same lines). MODE `today` does what a gateway
does without the guard: it reads the month's total (`get_tenant_total_cost`)
before each request and refuses past the budget, then records the usage (two
round trips a request, and nothing stops the races).
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tenantstore import (
    AsyncBudgetGuard,
    AsyncPostgresTenantRepository,
    AsyncPostgresUsageRepository,
    BudgetAlert,
    BudgetExceeded,
    BudgetGuard,
    PostgresTenantRepository,
    PostgresUsageRepository,
    UsageRecord,
    create_async_pool,
    create_pool,
)

CENT = Decimal("0.01")
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def wait_for(go: Path) -> None:
    """Say `ready`, then wait for the file `go` to exist, then say `start <t>`."""
    say("ready")
    while not go.exists():
        time.sleep(0.001)
    say(f"start {time.time()}")


def main() -> None:
    url, tenant_id, name, threads, lease_time = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else "guard"
    go = Path(sys.argv[7]) if len(sys.argv) > 7 else None
    if mode == "async":
        asyncio.run(
            async_main(url, tenant_id, name, int(threads), float(lease_time), go)
        )
        return
    with create_pool(url, min_size=1, max_size=int(threads) + 2) as pool:
        tenants = PostgresTenantRepository(pool)
        usage = PostgresUsageRepository(pool)
        guard = BudgetGuard(
            tenants,
            usage,
            lease_time=float(lease_time),
            renew_interval=float(lease_time) / 10,
        )
        say(f"holder {guard._holder}")

        def alert(event: BudgetAlert) -> None:
            say(f"alert {event.level}")

        guard.on_threshold(alert)
        tenant = tenants.get_by_id(tenant_id)
        counter = iter(range(10**9))
        counter_lock = threading.Lock()
        made = [0]
        month = datetime.now(UTC).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )

        def today(seed: int) -> None:
            rng = random.Random(seed)
            largest = 5
            while True:
                cents = rng.randint(1, largest)
                spent = usage.get_tenant_total_cost(tenant_id, month)
                if spent + cents * CENT > tenant.budget_usd:
                    if cents > 1:
                        largest = 1
                        continue
                    return
                with counter_lock:
                    number = next(counter)
                    made[0] += 1
                usage.record(
                    UsageRecord(
                        tenant_id=tenant_id,
                        request_id=f"{name}-{number}",
                        model="gpt-4o",
                        provider="openai",
                        cost_usd=rng.randint(0, cents) * CENT,
                    )
                )

        def spend(seed: int) -> None:
            rng = random.Random(seed)
            largest = 5
            while True:
                cents = rng.randint(1, largest)
                try:
                    reservation = guard.reserve(tenant, cents * CENT)
                except BudgetExceeded as refused:
                    if cents > 1:
                        largest = 1  # fill what is left a cent at a time
                        continue
                    if refused.held_usd == 0:
                        return  # nothing held anywhere, not a cent left
                    time.sleep(0.005)  # others still hold: wait for their settles
                    continue
                with counter_lock:
                    number = next(counter)
                    made[0] += 1
                reservation.settle(
                    UsageRecord(
                        tenant_id=tenant_id,
                        request_id=f"{name}-{number}",
                        model="gpt-4o",
                        provider="openai",
                        cost_usd=rng.randint(0, cents) * CENT,
                    )
                )

        workers = [
            threading.Thread(
                target=today if mode == "today" else spend, args=(hash((name, i)),)
            )
            for i in range(int(threads))
        ]
        if go is not None:
            wait_for(go)
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if go is not None:
            say(f"end {time.time()}")
        stats = guard.stats()
        guard.close()
        trips = stats.round_trips if mode != "today" else 0
        say(f"stats {made[0]} {trips} {stats.lease_steps}")
        say(f"done {made[0]}")


async def async_main(
    url: str,
    tenant_id: str,
    name: str,
    tasks: int,
    lease_time: float,
    go: Path | None = None,
) -> None:
    """MODE `async`: `tasks` asyncio tasks spending through one AsyncBudgetGuard."""
    pool = await create_async_pool(url, min_size=1, max_size=tasks + 2)
    try:
        tenants = AsyncPostgresTenantRepository(pool)
        usage = AsyncPostgresUsageRepository(pool)
        guard = AsyncBudgetGuard(
            tenants, usage, lease_time=lease_time, renew_interval=lease_time / 10
        )
        say(f"holder {guard._holder}")
        guard.on_threshold(lambda event: say(f"alert {event.level}"))
        tenant = await tenants.get_by_id(tenant_id)
        counter = iter(range(10**9))
        made = [0]

        async def spend(seed: int) -> None:
            rng = random.Random(seed)
            largest = 5
            while True:
                cents = rng.randint(1, largest)
                try:
                    reservation = await guard.reserve(tenant, cents * CENT)
                except BudgetExceeded as refused:
                    if cents > 1:
                        largest = 1
                        continue
                    if refused.held_usd == 0:
                        return
                    await asyncio.sleep(0.005)  # others still hold
                    continue
                number = next(counter)
                made[0] += 1
                await reservation.settle(
                    UsageRecord(
                        tenant_id=tenant_id,
                        request_id=f"{name}-{number}",
                        model="gpt-4o",
                        provider="openai",
                        cost_usd=rng.randint(0, cents) * CENT,
                    )
                )

        if go is not None:
            await asyncio.to_thread(wait_for, go)
        await asyncio.gather(*(spend(hash((name, i))) for i in range(tasks)))
        stats = guard.stats()
        await guard.close()
        say(f"stats {made[0]} {stats.round_trips} {stats.lease_steps}")
        say(f"done {made[0]}")
    finally:
        await pool.close()


if __name__ == "__main__":
    main()
