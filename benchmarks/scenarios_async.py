"""The async twin's key lookup against psycopg's async pool by hand and asyncpg.

All three run on one asyncio event loop (the default one), a whole series per
`Runner.run`: `AsyncPostgresTenantRepository` on `create_async_pool`, the same SQL by
hand through that same `AsyncConnectionPool` (the floor), and asyncpg's prepared
`fetchrow` on one connection (the peer: another driver and protocol implementation,
no pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from psycopg.conninfo import conninfo_to_dict

from benchmarks.measure import Target, Variant, async_per_call
from benchmarks.scenario import Context, Scenario, check_id_row, check_tenant, cycle
from tenantstore import AsyncPostgresTenantRepository, _sql, create_async_pool

__all__ = ["SCENARIOS"]

_sha256 = hashlib.sha256


def asyncpg_params(conninfo: str) -> dict[str, Any]:
    """asyncpg.connect() arguments for a libpq conninfo string or URL."""
    info = conninfo_to_dict(conninfo)
    params: dict[str, Any] = {
        "host": info.get("host"),
        "user": info.get("user"),
        "password": info.get("password") or None,
        "database": info.get("dbname"),
    }
    if info.get("port"):
        params["port"] = int(str(info["port"]))
    return {k: v for k, v in params.items() if v is not None}


def dollar_params(statement: str, names: list[str]) -> str:
    for i, name in enumerate(names, 1):
        statement = statement.replace(f"%({name})s", f"${i}")
    return statement


@contextlib.contextmanager
def async_lookup(ctx: Context) -> Iterator[list[Variant]]:
    lookup = ctx.data.lookup()
    by_key = lookup.tenants.by_key
    keys = random.Random(3).sample(lookup.tenants.keys, len(lookup.tenants.keys))
    arg = cycle(keys)
    expected: Callable[[Any], str] = lambda key: by_key[key].id  # noqa: E731
    statement = _sql.SELECT_ENABLED_BY_HASH

    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(asyncio.Runner())
        pool = runner.run(create_async_pool(lookup.url))
        stack.callback(lambda: runner.run(pool.close()))
        repo = AsyncPostgresTenantRepository(pool)
        conn = runner.run(asyncpg.connect(**asyncpg_params(lookup.url)))
        stack.callback(lambda: runner.run(conn.close()))
        prepared = runner.run(conn.prepare(dollar_params(statement, ["hash", "now"])))

        async def floor(key: str) -> Any:
            async with pool.connection() as c:
                cur = await c.execute(
                    statement,
                    {
                        "hash": _sha256(key.encode()).hexdigest(),
                        "now": datetime.now(UTC),
                    },
                    prepare=True,
                )
                return await cur.fetchone()

        async def with_asyncpg(key: str) -> Any:
            return await prepared.fetchrow(
                _sha256(key.encode()).hexdigest(), datetime.now(UTC)
            )

        rows = check_id_row(expected)
        yield [
            Variant(
                "AsyncPostgresTenantRepository.get_by_api_key",
                "ours",
                async_per_call(
                    runner, repo.get_by_api_key, arg, check_tenant(expected)
                ),
            ),
            Variant(
                "hand-written psycopg, same AsyncConnectionPool",
                "floor",
                async_per_call(runner, floor, arg, rows),
                target=Target(1.10, "≤ 1.10x"),
                note="prepared, fetchone, builds nothing",
            ),
            Variant(
                "asyncpg, prepared fetchrow",
                "peer",
                async_per_call(runner, with_asyncpg, arg, rows),
                note="one connection, no pool",
            ),
        ]


SCENARIOS = (
    Scenario(
        "async-lookup",
        "async get_by_api_key, PostgreSQL, no cache, {s.tenants:,} tenants",
        async_lookup,
    ),
)
