"""Row <-> model conversion for the PostgreSQL backends (no I/O, shared by twins).

Rows come in the column order of `_sql.TENANT_COLUMNS` / `_sql.USAGE_COLUMNS`.
Timestamps are normalised to UTC whatever the session's TimeZone is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .models import Tenant, UsageRecord


def utc(value: datetime) -> datetime:
    # psycopg returns timestamptz in the session's time zone; callers get UTC.
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def tenant_from_row(row: tuple[Any, ...]) -> Tenant:
    return Tenant(
        id=row[0],
        name=row[1],
        api_key_hash=row[2],
        budget_usd=row[3],
        rate_limit_rpm=row[4],
        allowed_models=tuple(row[5]),
        default_provider=row[6],
        fallback_providers=tuple(row[7]),
        enabled=row[8],
        created_at=utc(row[9]),
        updated_at=utc(row[10]),
    )


def tenant_params(
    tenant: Tenant, *, now: datetime, api_key_encrypted: bytes | None
) -> dict[str, Any]:
    """Parameters of INSERT_TENANT / UPDATE_TENANT_* for a validated tenant."""
    return {
        "id": tenant.id,
        "name": tenant.name,
        "api_key_hash": tenant.api_key_hash,
        "same_hash": tenant.api_key_hash,
        "budget_usd": tenant.budget_usd,
        "rate_limit_rpm": tenant.rate_limit_rpm,
        "allowed_models": list(tenant.allowed_models),
        "default_provider": tenant.default_provider,
        "fallback_providers": list(tenant.fallback_providers),
        "enabled": tenant.enabled,
        "created_at": now,
        "updated_at": now,
        "now": now,
        "api_key_encrypted": api_key_encrypted,
    }


def usage_params(record: UsageRecord) -> dict[str, Any]:
    """Parameters of INSERT_USAGE for a validated, timestamped record."""
    return {
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
        "created_at": record.timestamp,
    }


def usage_from_row(tenant_id: str, row: tuple[Any, ...]) -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant_id,
        request_id=row[0],
        model=row[1],
        provider=row[2],
        input_tokens=row[3],
        output_tokens=row[4],
        cost_usd=row[5],
        cached=row[6],
        latency_ms=row[7],
        status=row[8],
        timestamp=utc(row[9]),
    )
