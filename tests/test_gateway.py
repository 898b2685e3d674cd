"""The example gateway (examples/gateway.py) under a real uvicorn, driven over HTTP.

Each test starts the gateway as its own process (`python -m uvicorn
examples.gateway:app` on 127.0.0.1, port 0, the port read from its log) on the
test database, with `UPSTREAM_URL` pointing at a second uvicorn serving the stub
upstream (`examples.gateway:upstream_app`). Tenants are made, disabled and read
from this process or from the CLI, another process again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import ConnectionPool

from examples.gateway import STUB_USAGE
from tenantstore import (
    PostgresTenantRepository,
    PostgresUsageRepository,
    Tenant,
    generate_api_key,
    hash_api_key,
)
from tests.polling import DEADLINE, wait_until
from tests.tcpproxy import tcp_proxy

ROOT = Path(__file__).resolve().parents[1]
_PATH = f"{ROOT / 'lib'}{os.pathsep}{ROOT}"  # this checkout's tenantstore, examples
_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
GPT_4O_STUB_COST = Decimal("0.00035")  # 10 input tokens at $0.005/1k, 20 at $0.015/1k


class Server:
    """A uvicorn process; its log is read by a thread (the port comes from it)."""

    def __init__(self, target: str, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._ports: list[int] = []  # filled by the reader thread
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                target,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-access-log",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": _PATH, **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(
            lambda: bool(self._ports) or self.process.poll() is not None,
            f"{target} is listening",
        )
        assert self._ports, "".join(self.lines)
        self.url = f"http://127.0.0.1:{self._ports[0]}"

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = _RUNNING.search(line)
            if found:
                self._ports.append(int(found.group(1)))

    def terminate(self) -> int:
        """SIGTERM, as an orchestrator stops it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        self._reader.join(DEADLINE)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return status


@pytest.fixture(scope="module")
def upstream() -> Iterator[Server]:
    server = Server("examples.gateway:upstream_app", {})
    yield server
    server.terminate()


@pytest.fixture
def gateway(clean_db: str, upstream: Server) -> Iterator[Server]:
    server = Server(
        "examples.gateway:app", {"DATABASE_URL": clean_db, "UPSTREAM_URL": upstream.url}
    )
    yield server
    server.terminate()


@pytest.fixture
def client(gateway: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=DEADLINE) as c:
        yield c


def make_tenant(pool: ConnectionPool, **fields: Any) -> tuple[Tenant, str]:
    key = generate_api_key()
    tenant = PostgresTenantRepository(pool).create(
        Tenant(name="gw", api_key_hash=hash_api_key(key), **fields)
    )
    return tenant, key


def chat(
    client: httpx.Client, key: str, request_id: str | None = None, **body: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    payload = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hello?"}],
        **body,
    }
    return client.post("/v1/chat/completions", json=payload, headers=headers)


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {"message": message, "type": "error", "code": status}
    }


def test_a_valid_key_gets_the_completion_others_401(
    pool: ConnectionPool, client: httpx.Client
) -> None:
    _, key = make_tenant(pool, budget_usd=Decimal("10"))

    ok = chat(client, key, "req-1")
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["object"] == "chat.completion"
    assert body["usage"] == STUB_USAGE
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["x_gateway"]["request_id"] == "req-1"
    assert ok.headers["X-RateLimit-Limit"] == "60"
    assert ok.headers["X-RateLimit-Remaining"] == "59"

    assert_error(chat(client, generate_api_key()), 401, "invalid API key")
    assert_error(chat(client, "not-a-key"), 401, "invalid API key")
    missing = client.post("/v1/chat/completions", json={})
    assert_error(missing, 401, "missing API key")
    assert_error(
        client.post(
            "/v1/chat/completions",
            content=b"{",
            headers={"Authorization": f"Bearer {key}"},
        ),
        400,
        "invalid request body",
    )
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_over_budget_is_402_and_holds_nothing(
    pool: ConnectionPool, client: httpx.Client
) -> None:
    _, key = make_tenant(pool, budget_usd=Decimal("0.01"))

    # 100,000 output tokens of gpt-4o may cost $1.50: more than the budget.
    assert_error(chat(client, key, max_tokens=100_000), 402, "budget exceeded")
    # Refused, it held nothing: a request that fits still goes through.
    assert chat(client, key, max_tokens=10).status_code == 200


def test_the_rate_limit_is_429(pool: ConnectionPool, client: httpx.Client) -> None:
    _, key = make_tenant(pool, rate_limit_rpm=2)

    assert [chat(client, key).status_code for _ in range(2)] == [200, 200]
    refused = chat(client, key)
    assert_error(refused, 429, "rate limit exceeded")
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    _, other_key = make_tenant(pool, rate_limit_rpm=2)
    assert chat(client, other_key).status_code == 200  # per tenant


def _cli(url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tenantstore", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "lib"), "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_revocation_from_another_process_reaches_the_gateway(
    clean_db: str, pool: ConnectionPool, client: httpx.Client
) -> None:
    tenant, key = make_tenant(pool, budget_usd=Decimal("10"))
    rotated, old_key = make_tenant(pool, budget_usd=Decimal("10"))
    assert chat(client, key).status_code == 200  # cached now
    assert chat(client, old_key).status_code == 200

    _cli(clean_db, "tenant", "disable", tenant.id)
    printed = _cli(clean_db, "tenant", "rotate-key", rotated.id)
    new_key = re.search(r"tsk_\w+", printed)
    assert new_key is not None, printed

    wait_until(
        lambda: chat(client, key).status_code == 401,
        "the disabled tenant's key is refused",
    )
    wait_until(
        lambda: chat(client, old_key).status_code == 401,
        "the rotated-away key is refused",
    )
    assert chat(client, new_key.group()).status_code == 200


def test_usage_adds_up_once_the_gateway_stops(
    pool: ConnectionPool, gateway: Server, client: httpx.Client
) -> None:
    budgeted, budgeted_key = make_tenant(pool, budget_usd=Decimal("10"))
    unlimited, unlimited_key = make_tenant(pool, budget_usd=Decimal("0"))
    sent: dict[str, list[str]] = {budgeted.id: [], unlimited.id: []}
    for i in range(6):
        for tenant, key in ((budgeted, budgeted_key), (unlimited, unlimited_key)):
            request_id = f"req-{tenant.id[:8]}-{i}"
            assert chat(client, key, request_id).status_code == 200
            sent[tenant.id].append(request_id)
    # A retried request (same X-Request-ID) is answered, and recorded once.
    assert chat(client, budgeted_key, sent[budgeted.id][0]).status_code == 200

    # SIGTERM: uvicorn finishes the requests (their settles), runs the lifespan's
    # shutdown (the writer flushes) and then dies of the signal it caught.
    assert gateway.terminate() in (0, -signal.SIGTERM)
    log = "".join(gateway.lines)
    assert "Application shutdown complete." in log, log

    usage = PostgresUsageRepository(pool)
    since = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for tenant_id, request_ids in sent.items():
        records = usage.get_tenant_usage(tenant_id, since=since)
        assert sorted(r.request_id for r in records) == sorted(request_ids)
        assert {(r.input_tokens, r.output_tokens) for r in records} == {(10, 20)}
        assert usage.get_tenant_total_cost(tenant_id, since=since) == (
            GPT_4O_STUB_COST * len(request_ids)
        )
        days = usage.get_tenant_usage_summary(tenant_id, since.date())
        assert {d.model for d in days} == {"gpt-4o"}  # (a day or two: midnight)
        assert sum(d.records for d in days) == len(request_ids)
        assert sum(d.input_tokens for d in days) == 10 * len(request_ids)
        assert sum(d.output_tokens for d in days) == 20 * len(request_ids)


def test_a_store_that_cannot_answer_is_503(
    clean_db: str, pool: ConnectionPool, upstream: Server
) -> None:
    _, key = make_tenant(pool, budget_usd=Decimal("10"))
    with tcp_proxy(clean_db) as proxy:
        # The pool goes through the proxy; the listener has a direct URL.
        env = {
            "DATABASE_URL": proxy.url(clean_db),
            "LISTEN_URL": clean_db,
            "UPSTREAM_URL": upstream.url,
        }
        server = Server("examples.gateway:app", env)
        try:
            with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
                proxy.refuse()
                proxy.cut()
                # Not cached: the lookup needs the database.
                assert_error(chat(client, key), 503, "service unavailable")
                assert client.get("/health").status_code == 503
                proxy.passthrough()
                wait_until(
                    lambda: chat(client, key).status_code == 200,
                    "the gateway answers again",
                )
                assert client.get("/health").status_code == 200
        finally:
            server.terminate()
