"""A database the Go service filled, and the Go service serving while it migrates.

Shared by tests/test_migrate_online.py and the ``migrate-online`` benchmark
scenario. `load_go_era` fills a database at version 1 (the Go service's schema) on
the server itself (generate_series: a million rows in seconds), with what that
service leaves: NULLs in nullable columns, requests stored twice. `ServingLoop` is
the gateway meanwhile, in a thread of its own: it looks a key up and records one
request with the Go service's own SELECT and INSERT (tenantstore's statements need
what later migrations build: the unique index, the columns of 011), over and over,
and keeps the longest time one round took.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tenantstore import hash_api_key, migrate

__all__ = [
    "LOOKUP_TENANTS",
    "OnlineRun",
    "ServingLoop",
    "load_go_era",
    "migrate_online",
]

LOOKUP_TENANTS = 1_000  # tenants the loop authenticates as; usage spreads over them
DAYS = 30
# The Go service's Record statement (internal/repository/postgres_usage.go).
# The Go service's key lookup (internal/repository/postgres.go), as it sends it.
GO_LOOKUP = (
    "SELECT id, name, api_key_hash, budget_usd, rate_limit_rpm, allowed_models,"
    " default_provider, fallback_providers, enabled, created_at, updated_at"
    " FROM tenants WHERE api_key_hash = %s AND enabled = true"
)
GO_RECORD_USAGE = (
    "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
    " input_tokens, output_tokens, cost_usd, cached, latency_ms, status, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def tenant_id(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def key(n: int) -> str:
    return f"online-key-{n}"


def load_go_era(url: str, rows: int) -> None:
    """Version 1 (through `source`'s 001) plus `rows` usage rows, as the Go service
    leaves them: every 1000th with NULLs, every 5000th stored twice."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tenants (id, name, api_key_hash, budget_usd, rate_limit_rpm,"
            " allowed_models, fallback_providers, enabled, created_at, updated_at)"
            " SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid,"
            "        'online ' || g,"
            "        encode(sha256(convert_to('online-key-' || g, 'UTF8')), 'hex'),"
            "        0, 60, '{}', '{}', true, now(), now()"
            " FROM generate_series(1, %s) AS g",
            (LOOKUP_TENANTS,),
        )
        # Tenants the Go service wrote with nil slices and enabled NULL.
        conn.execute(
            "INSERT INTO tenants (id, name, api_key_hash, allowed_models,"
            " fallback_providers, enabled)"
            " SELECT gen_random_uuid(), 'null ' || g, md5(g::text) || md5(g::text),"
            "        NULL, NULL, NULL FROM generate_series(1, 100) AS g"
        )
        conn.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
            " input_tokens, output_tokens, cost_usd, cached, latency_ms, status,"
            " created_at)"
            " SELECT ('00000000-0000-0000-0000-'"
            "         || lpad((g %% %s + 1)::text, 12, '0'))::uuid,"
            "        'go-' || g, 'gpt-4o', 'openai', 10, 20,"
            "        CASE WHEN g %% 1000 = 0 THEN NULL ELSE (g %% 997) * 0.000001 END,"
            "        false, 5, CASE WHEN g %% 1000 = 0 THEN NULL ELSE 'success' END,"
            "        timestamptz '2025-01-01Z' + (g %% %s) * interval '1 day'"
            "          + (g %% 86400) * interval '1 second'"
            " FROM generate_series(1, %s) AS g",
            (LOOKUP_TENANTS, DAYS, rows),
        )
        conn.execute(
            "INSERT INTO usage_records (tenant_id, request_id, model, provider,"
            " cost_usd, created_at)"
            " SELECT tenant_id, request_id, model, provider, cost_usd, created_at"
            " FROM usage_records WHERE request_id ~ '^go-[0-9]*5000$'"
        )
        conn.execute("ANALYZE tenants")
        conn.execute("ANALYZE usage_records")


@dataclass
class ServingLoop:
    """Authenticate and record, round after round, until `stop()`; never raises."""

    url: str
    rounds: int = 0
    longest: float = 0.0
    errors: list[BaseException] = field(default_factory=list)
    recorded: list[tuple[str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="serving-loop")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self) -> None:
        try:
            # What serves during an upgrade is the code deployed before it: this
            # library's previous release or the Go service, whose statements name
            # the columns they know. This release's repository names the columns
            # of migration 011, so the loop authenticates with the Go service's
            # own SELECT, which every migration must keep working.
            with psycopg.connect(self.url, autocommit=True) as go:
                n = 0
                while not self._stop.is_set():
                    n += 1
                    which = n % LOOKUP_TENANTS + 1
                    started = time.perf_counter()
                    row = go.execute(
                        GO_LOOKUP, (hash_api_key(key(which)),), prepare=True
                    ).fetchone()
                    if row is None:
                        raise AssertionError("a tenant stopped authenticating")
                    request = (str(row[0]), f"loop-{n}")
                    go.execute(
                        GO_RECORD_USAGE,
                        (*request, ("gpt-4o", "gpt-4o-mini")[n % 2], "openai",
                         1, 2, 0.000125, False, 3, "success",
                         "2025-01-15T12:00:00Z"),
                    )  # fmt: skip
                    self.longest = max(self.longest, time.perf_counter() - started)
                    self.recorded.append(request)
                    self.rounds += 1
        except BaseException as exc:
            self.errors.append(exc)


@dataclass(frozen=True)
class OnlineRun:
    """What one `migrate up` under load gave."""

    applied: list[int]
    seconds: float  # the migration's wall time
    longest_stall: float  # the longest round of the loop while it ran
    rounds: int  # rounds the loop completed while it ran
    errors: list[BaseException]
    recorded: list[tuple[str, str]]


def migrate_online(url: str, source: Path | None = None) -> OnlineRun:
    """`migrate up` (from `source`) while a `ServingLoop` serves, and what it saw."""
    loop = ServingLoop(url)
    loop.start()
    try:
        # The loop is serving (a round done) before the migration starts.
        deadline = time.monotonic() + 60
        while loop.rounds == 0 and not loop.errors and time.monotonic() < deadline:
            time.sleep(0.001)
        rounds_before, loop.longest = loop.rounds, 0.0
        started = time.perf_counter()
        applied = migrate.up(url, source=source)
        seconds = time.perf_counter() - started
        rounds = loop.rounds - rounds_before
        longest = loop.longest
    finally:
        loop.stop()
    return OnlineRun(applied, seconds, longest, rounds, loop.errors, loop.recorded)
