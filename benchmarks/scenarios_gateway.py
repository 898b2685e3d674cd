"""What tenantstore adds to a gateway's request: the example app, with and without it.

`gateway-overhead` runs examples/gateway.py's Starlette app in process, one request
after another (a bounded load: one request in flight, from a local client on the
same event loop). Each request is a direct ASGI call — scope, `receive`, `send`:
no sockets, no HTTP parsing, no httpx — so that what differs between the rows is
the store behind the app and nothing else; a sample runs from the call until the
app has sent the last byte of its response.

- ours: the app on tenantstore (`open_store`: `AsyncStore.open` with every part:
  pool, cached tenants and listener, usage writer, budget guard), a tenant with
  a budget the run cannot exhaust: authenticate (a cache hit), reserve (from the
  held share), the stub upstream, the response; the settle (one usage insert)
  runs after the response.
- floor: the very same app over a constant-tenant stub store (no tenantstore call
  at all); its target bounds ours' median minus the floor's: ≤ 50 µs.
- reference: ours, timed until the app returns, the settle's insert included (what
  a request costs the process, not what the client waits for).
- reference: ours for a tenant without a budget (`budget_usd` 0): authenticate, no
  hold, `writer.submit` (batched in the background), the response.

How to read it (measured 2026-12-01 on the shared 2-vCPU machine): the tenant
without a budget is ~1.05x the floor (+10-20 µs median); the budgeted tenant ~2x
(+150-350 µs). The difference is not on the request path: with the settle replaced
by `release()` (no insert), the budgeted requests cost what the others do. It is
the previous request's settle — one usage insert, awaited after the response, the
process waiting on the server while others run on its CPU — leaving the next
request on cold caches. Settling through the writer would remove it; the guard
records its settle itself today.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Any

from benchmarks.measure import CheckFailed, Sampled, Series, Target, Variant
from benchmarks.scenario import Context, Scenario
from examples.gateway import STUB_USAGE, StubUpstream, create_app, open_store
from tenantstore import (
    PostgresTenantRepository,
    Tenant,
    UsageRecord,
    create_pool,
    generate_api_key,
    hash_api_key,
)

__all__ = ["SCENARIOS"]

_IDLE_TURNS = 3
OVERHEAD_TARGET = Target(50e-6, "≤ 50 µs over", over=True)
_BODY = json.dumps(
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello?"}]}
).encode()


class _NoHold:
    async def settle(self, record: UsageRecord) -> bool:
        return True

    async def release(self) -> None:
        pass


class _Healthy:
    ok = True


class _ConstantStore:
    """The floor's store: every key is `tenant`, nothing is held or recorded."""

    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant
        self._hold = _NoHold()
        self.tenants = self.budgets = self.writer = self

    async def get_by_api_key(self, api_key: str) -> Tenant:
        return self._tenant

    async def reserve(self, tenant: Tenant, estimate: Decimal) -> _NoHold:
        return self._hold

    def submit(self, record: UsageRecord) -> None:
        pass

    async def health(self) -> _Healthy:
        return _Healthy()


@contextlib.asynccontextmanager
async def _constant(tenant: Tenant) -> AsyncIterator[_ConstantStore]:
    yield _ConstantStore(tenant)


class _Call:
    """One ASGI request to `app`; `responded` and `done` are perf_counter stamps."""

    __slots__ = ("body", "done", "responded", "responded_cpu", "status")

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.responded = 0.0
        self.responded_cpu = 0.0
        self.done = 0.0


def _scope(key: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_BODY)).encode()),
            (b"x-request-id", request_id.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def _series(
    runner: asyncio.Runner, app: Any, key: str, prefix: str, *, until_done: bool
) -> Series:
    """One request per sample, timed to the response's last byte (or, with
    `until_done`, until the app returns: its background settle included)."""
    counter = itertools.count()
    clock, cpu_clock = time.perf_counter, time.thread_time

    async def request(scope: dict[str, Any], call: _Call) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": _BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                call.status = message["status"]
            elif kind == "http.response.body":
                call.body += message.get("body", b"")
                if not message.get("more_body", False):
                    call.responded = clock()
                    call.responded_cpu = cpu_clock()

        await app(scope, receive, send)
        call.done = clock()

    def check(request_id: str, call: _Call) -> None:
        if call.status != 200:
            raise CheckFailed(f"status {call.status}: {call.body[:200]!r}")
        body = json.loads(call.body)
        if body["usage"] != STUB_USAGE or body["x_gateway"]["request_id"] != request_id:
            raise CheckFailed(f"not the stub's completion: {body!r}")

    async def run(n: int) -> Sampled:
        times, cpu = [0.0] * n, [0.0] * n
        for i in range(n):
            request_id = f"{prefix}-{next(counter)}"
            scope, call = _scope(key, request_id), _Call()
            c0 = cpu_clock()
            t0 = clock()
            await request(scope, call)
            c1 = cpu_clock()
            times[i] = (call.done if until_done else call.responded) - t0
            cpu[i] = (c1 if until_done else call.responded_cpu) - c0
            check(request_id, call)
            # Between two requests a server's loop waits for the next one on its
            # socket: what the last request scheduled runs then, not inside the
            # next request's timing.
            for _ in range(_IDLE_TURNS):
                await asyncio.sleep(0)
        return Sampled(times, cpu, n)

    return lambda n: runner.run(run(n))


@contextlib.contextmanager
def _tenants(url: str) -> Iterator[list[tuple[Tenant, str]]]:
    made: list[tuple[Tenant, str]] = []
    with create_pool(url, min_size=1, max_size=2) as pool:
        repo = PostgresTenantRepository(pool)
        try:
            for budget in (Decimal("99999999.99"), Decimal(0)):
                key = generate_api_key()
                tenant = repo.create(
                    Tenant(
                        name="gateway-bench",
                        api_key_hash=hash_api_key(key),
                        budget_usd=budget,
                        rate_limit_rpm=2_000_000_000,
                    )
                )
                made.append((tenant, key))
            yield made
        finally:
            for tenant, _ in made:
                repo.delete(tenant.id)  # cascades its usage and leases


def _exit_lifespan(
    runner: asyncio.Runner, lifespan: AbstractAsyncContextManager[Any]
) -> None:
    runner.run(lifespan.__aexit__(None, None, None))


@contextlib.contextmanager
def gateway_overhead(ctx: Context) -> Iterator[list[Variant]]:
    url = ctx.data.lookup().url
    with (
        _tenants(url) as made,
        asyncio.Runner() as runner,
        contextlib.ExitStack() as stack,
    ):
        (budgeted, key), (_, free_key) = made
        apps = []
        stores: list[Callable[[], AbstractAsyncContextManager[Any]]] = [
            lambda: open_store(url),
            lambda: _constant(budgeted),
        ]
        for store in stores:
            app = create_app(store=store, upstream=StubUpstream)
            lifespan = app.router.lifespan_context(app)
            runner.run(lifespan.__aenter__())
            stack.callback(_exit_lifespan, runner, lifespan)
            apps.append(app)
        ours_app, stub_app = apps
        yield [
            Variant(
                "gateway on tenantstore, to the response",
                "ours",
                _series(runner, ours_app, key, "gw", until_done=False),
                note="authenticate (cache hit), reserve; settle after the response",
            ),
            Variant(
                "the same app, constant-tenant stub store",
                "floor",
                _series(runner, stub_app, key, "stub", until_done=False),
                target=OVERHEAD_TARGET,
                note="no tenantstore call",
            ),
            Variant(
                "ours, until the app returns (settle included)",
                "reference",
                _series(runner, ours_app, key, "gw-done", until_done=True),
                note="the settle's usage insert after the response",
            ),
            Variant(
                "ours, tenant without a budget (writer.submit)",
                "reference",
                _series(runner, ours_app, free_key, "gw-free", until_done=False),
                note="authenticate, no hold, submit to the usage writer",
            ),
        ]


SCENARIOS = (
    Scenario(
        "gateway-overhead",
        "example gateway (Starlette, in-process ASGI, one request in flight): "
        "tenantstore's share",
        gateway_overhead,
    ),
)
