"""An OpenAI-compatible gateway on tenantstore, in front of a stub upstream.

    DATABASE_URL=postgresql://... uvicorn examples.gateway:app

`POST /v1/chat/completions` does what a gateway's request path does:

1. authenticates `Authorization: Bearer KEY` through the cached tenant repository
   (a cache hit is answered from memory; a revoked key stops at once, through the
   listener) — 401 for a missing, unknown, disabled or expired key;
2. applies the tenant's `rate_limit_rpm`, a fixed one-minute window per tenant as
   the Go service's in-memory limiter does, with its `X-RateLimit-*` headers — 429;
3. reserves the request's estimated cost on the tenant's budget (`budgets.reserve`)
   — 402 when this month's spend plus holds plus the estimate would pass it;
4. calls the upstream (502 when it fails: the hold goes back);
5. answers, and then settles: `reservation.settle(record)` records the actual cost
   and releases the hold (after the response, so the client does not wait for the
   insert). A tenant without a budget (`budget_usd` 0) holds nothing: its record goes
   through the usage writer (`writer.submit`, batched in the background). If the
   settle finds the store unavailable, the record goes to the writer too (it retries
   and never drops it) and the hold is released.

A store that cannot answer (`StoreUnavailable`) is 503. Error bodies are the Go
service's (OpenAI style): `{"error": {"message": ..., "type": "error", "code": N}}`.
`GET /health` answers 200 or 503 from `store.health()`.

Configuration, by environment variable:
- `DATABASE_URL` (required): the tenantstore database, migrated;
- `LISTEN_URL`: a direct URL for the cache listener when `DATABASE_URL` goes through
  PgBouncer (LISTEN needs a session of its own);
- `UPSTREAM_URL`: the model API to forward to (OpenAI-compatible); unset, an
  in-process stub answers every request with a fixed completion. `upstream_app` is
  that stub as an app of its own: `uvicorn examples.gateway:upstream_app`.

`create_app(store=..., upstream=...)` builds the same app over another store or
upstream (the benchmark's `gateway-overhead` runs it over a constant-tenant stub).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, ROUND_UP, Decimal
from typing import Any, Protocol, cast

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tenantstore import (
    AsyncStore,
    BudgetExceeded,
    StoreUnavailable,
    Tenant,
    TenantNotFound,
    UsageRecord,
)

__all__ = [
    "GatewayStore",
    "HttpUpstream",
    "StubUpstream",
    "Upstream",
    "app",
    "create_app",
    "estimate_cost",
    "open_store",
    "stub_completion",
    "upstream_app",
]

_log = logging.getLogger("examples.gateway")

# -- what the app needs of tenantstore (AsyncStore has all of it) --------------------


class _Tenants(Protocol):
    async def get_by_api_key(self, api_key: str) -> Tenant: ...


class _Reservation(Protocol):
    async def settle(self, record: UsageRecord) -> bool: ...

    async def release(self) -> None: ...


class _Budgets(Protocol):
    async def reserve(self, tenant: Tenant, estimate: Decimal) -> _Reservation: ...


class _Writer(Protocol):
    def submit(self, record: UsageRecord) -> None: ...


class _Health(Protocol):
    @property
    def ok(self) -> bool: ...


class GatewayStore(Protocol):
    """The parts of a store the gateway uses, by `AsyncStore`'s names."""

    @property
    def tenants(self) -> _Tenants: ...

    @property
    def budgets(self) -> _Budgets: ...

    @property
    def writer(self) -> _Writer: ...

    async def health(self) -> _Health: ...


@contextlib.asynccontextmanager
async def open_store(
    url: str, *, listen_url: str | None = None
) -> AsyncIterator[GatewayStore]:
    """Open tenantstore for the gateway: pool, cached tenants and their listener,
    usage writer and budget guard, closed together at the end (usage flushed)."""
    async with AsyncStore.open(url, listen_url=listen_url) as store:
        # Opened with every part: the writer and the guard are there.
        assert store.writer is not None
        assert store.budgets is not None
        yield cast(GatewayStore, store)


# -- the upstream --------------------------------------------------------------------


class Upstream(Protocol):
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


STUB_USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


def stub_completion(body: dict[str, Any]) -> dict[str, Any]:
    """A fixed chat completion, with `usage` token counts, for `body`'s model."""
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": body.get("model", "stub"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the stub."},
                "finish_reason": "stop",
            }
        ],
        "usage": dict(STUB_USAGE),
    }


class StubUpstream:
    """The stub, in process: no network."""

    provider = "stub"

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return stub_completion(body)

    async def aclose(self) -> None:
        pass


class HttpUpstream:
    """An OpenAI-compatible API at `url` (`POST {url}/v1/chat/completions`)."""

    provider = "upstream"

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self._client = httpx.AsyncClient(base_url=url, timeout=timeout)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        completion: dict[str, Any] = response.json()
        return completion

    async def aclose(self) -> None:
        await self._client.aclose()


async def _stub_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(stub_completion(await request.json()))


upstream_app = Starlette(
    routes=[Route("/v1/chat/completions", _stub_endpoint, methods=["POST"])]
)


# -- cost ----------------------------------------------------------------------------

# USD per 1,000 tokens (input, output): the Go service's table, as Decimals.
PRICES: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-4o": (Decimal("0.005"), Decimal("0.015")),
    "gpt-4o-mini": (Decimal("0.00015"), Decimal("0.0006")),
    "gpt-4-turbo": (Decimal("0.01"), Decimal("0.03")),
    "gpt-3.5-turbo": (Decimal("0.0005"), Decimal("0.0015")),
    "claude-3-5-sonnet-20241022": (Decimal("0.003"), Decimal("0.015")),
    "claude-3-5-haiku-20241022": (Decimal("0.001"), Decimal("0.005")),
}
_NO_PRICE = (Decimal(0), Decimal(0))  # an unknown model costs 0, as in the Go service
_COST_STEP = Decimal("0.0000000001")  # usage_records.cost_usd is numeric(20,10)
DEFAULT_MAX_TOKENS = 1024


def _cost(model: str, input_tokens: int, output_tokens: int, rounding: str) -> Decimal:
    per_in, per_out = PRICES.get(model, _NO_PRICE)
    cost = (input_tokens * per_in + output_tokens * per_out) / 1000
    return cost.quantize(_COST_STEP, rounding=rounding)


def estimate_cost(model: str, messages: list[Any], max_tokens: int | None) -> Decimal:
    """What a request may cost at most, before it runs: its prompt at about four
    characters a token, and `max_tokens` of output (else DEFAULT_MAX_TOKENS)."""
    chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    output = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
    return _cost(model, chars // 4 + 1, output, ROUND_UP)


# -- rate limit ----------------------------------------------------------------------


class _RateLimiter:
    """The Go service's in-memory limiter: per tenant, a one-minute window that
    starts with its first request and counts up to the limit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # id -> [count, resets at]

    def allow(self, tenant_id: str, limit: int) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until the window resets)."""
        now = self._clock()
        window = self._windows.get(tenant_id)
        if window is None or now > window[1]:
            window = self._windows[tenant_id] = [0, now + 60.0]
        if window[0] >= limit:
            return False, 0, window[1] - now
        window[0] += 1
        return True, limit - int(window[0]), window[1] - now


def _rate_headers(limit: int, remaining: int, reset_in: float) -> dict[str, str]:
    reset = datetime.now(UTC) + timedelta(seconds=reset_in)
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# -- the app -------------------------------------------------------------------------


def _error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": "error", "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _default_store() -> AbstractAsyncContextManager[GatewayStore]:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set DATABASE_URL to the tenantstore database")
    return open_store(url, listen_url=os.environ.get("LISTEN_URL") or None)


def _default_upstream() -> Upstream:
    url = os.environ.get("UPSTREAM_URL")
    return HttpUpstream(url) if url else StubUpstream()


def _health_body(health: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "ok" if health.ok else "unavailable"}
    if dataclasses.is_dataclass(health) and not isinstance(health, type):
        # StoreHealth: every part's health, JSON-ready
        body["checks"] = {
            k: v for k, v in dataclasses.asdict(health).items() if k != "ok"
        }
    return body


async def _settle(
    store: GatewayStore, reservation: _Reservation, record: UsageRecord
) -> None:
    try:
        await reservation.settle(record)
    except StoreUnavailable:
        _log.warning("settle: store unavailable, the record goes through the writer")
        try:
            store.writer.submit(record)
        except StoreUnavailable:
            _log.error("settle: the writer is full, a usage record is lost")
        await reservation.release()


def create_app(
    *,
    store: Callable[[], AbstractAsyncContextManager[GatewayStore]] | None = None,
    upstream: Callable[[], Upstream] | None = None,
) -> Starlette:
    """The gateway over `store()` (opened at startup, closed at shutdown; default:
    `open_store` on $DATABASE_URL) and `upstream()` (default: $UPSTREAM_URL, else
    the in-process stub)."""
    open_parts = store or _default_store
    make_upstream = upstream or _default_upstream
    limiter = _RateLimiter()
    parts: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with open_parts() as opened:
            up = make_upstream()
            parts.update(store=opened, upstream=up)
            try:
                yield
            finally:
                await up.aclose()
        # Leaving the store's context: the writer is flushed, then closed.

    async def chat_completions(request: Request) -> JSONResponse:
        store: GatewayStore = parts["store"]
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or len(auth) == 7:
            return _error(401, "missing API key")
        try:
            tenant = await store.tenants.get_by_api_key(auth[7:])
        except TenantNotFound:
            return _error(401, "invalid API key")
        except StoreUnavailable:
            return _error(503, "service unavailable")

        limit = tenant.rate_limit_rpm
        allowed, remaining, reset_in = limiter.allow(tenant.id, limit)
        headers = _rate_headers(limit, remaining, reset_in)
        if not allowed:
            return _error(429, "rate limit exceeded", headers)

        try:
            body = await request.json()
            model, messages = body["model"], body["messages"]
            max_tokens = body.get("max_tokens")
            if not (
                isinstance(model, str)
                and isinstance(messages, list)
                and (max_tokens is None or type(max_tokens) is int)
            ):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid request body", headers)

        reservation: _Reservation | None = None
        if tenant.budget_usd > 0:  # 0: no limit, nothing to hold
            try:
                reservation = await store.budgets.reserve(
                    tenant, estimate_cost(model, messages, max_tokens)
                )
            except BudgetExceeded:
                return _error(402, "budget exceeded", headers)
            except StoreUnavailable:
                return _error(503, "service unavailable", headers)

        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        up: Upstream = parts["upstream"]
        started = time.perf_counter()
        try:
            completion = await up.complete(body)
            usage = completion["usage"]
            input_tokens = int(usage["prompt_tokens"])
            output_tokens = int(usage["completion_tokens"])
        except Exception:
            _log.exception("upstream failed (request %s)", request_id)
            if reservation is not None:
                await reservation.release()
            return _error(502, "upstream failed", headers)

        cost = _cost(model, input_tokens, output_tokens, ROUND_HALF_EVEN)
        record = UsageRecord(
            tenant_id=tenant.id,
            request_id=request_id,
            model=model,
            provider=getattr(up, "provider", "upstream"),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            latency_ms=int((time.perf_counter() - started) * 1000),
        )
        completion["x_gateway"] = {
            "provider": record.provider,
            "cost_usd": float(cost),
            "cache_hit": False,
            "request_id": request_id,
        }
        headers["X-Request-ID"] = request_id
        if reservation is None:
            try:
                store.writer.submit(record)
            except StoreUnavailable:
                _log.error(
                    "the usage writer is full: request %s is not recorded", request_id
                )
            return JSONResponse(completion, headers=headers)
        return JSONResponse(
            completion,
            headers=headers,
            background=BackgroundTask(_settle, store, reservation, record),
        )

    async def health(_: Request) -> JSONResponse:
        store: GatewayStore = parts["store"]
        checked = await store.health()
        return JSONResponse(
            _health_body(checked), status_code=200 if checked.ok else 503
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


app = create_app()
