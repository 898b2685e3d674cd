"""Row <-> model conversion for the PostgreSQL backends (no I/O, shared by twins).

Rows come in the column order of `_sql.TENANT_COLUMNS` / `_sql.USAGE_COLUMNS`.
Timestamps are normalised to UTC whatever the session's TimeZone is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from ._models import AdminUser, RecordOutcome, Tenant, UsageRecord, UsageSummary
from ._sql import TENANT_COLUMNS, USAGE_COLUMNS


def utc(value: datetime) -> datetime:
    # psycopg returns timestamptz in the session's time zone; callers get UTC.
    return value if value.tzinfo is UTC else value.astimezone(UTC)


# Rows become models on every lookup: set the slots directly instead of going
# through the frozen dataclass __init__ (keywords, defaults, object.__setattr__),
# which costs about three times as much. The values were validated on the way in.
_new = object.__new__
_tenant_setters = tuple(getattr(Tenant, name).__set__ for name in TENANT_COLUMNS)
# Usage rows leave out tenant_id (the caller's argument) and call created_at
# `timestamp`.
_usage_setters = tuple(
    getattr(UsageRecord, name).__set__
    for name in ("tenant_id", *USAGE_COLUMNS[:-1], "timestamp")
)


def tenant_from_row(row: tuple[Any, ...]) -> Tenant:
    """A Tenant from a row in `_sql.TENANT_COLUMNS` order."""
    tenant: Tenant = _new(Tenant)
    s = _tenant_setters
    s[0](tenant, row[0])
    s[1](tenant, row[1])
    s[2](tenant, row[2])
    s[3](tenant, row[3])
    s[4](tenant, row[4])
    s[5](tenant, tuple(row[5]))
    s[6](tenant, row[6])
    s[7](tenant, tuple(row[7]))
    s[8](tenant, row[8])
    try:
        s[9](tenant, utc(row[9]))
        s[10](tenant, utc(row[10]))
    except AttributeError:
        # A NULL timestamp, which only a database before migration 002 can hold
        # (the other columns are made well-typed by the SELECT): None, as a Tenant
        # not yet stored has. Caught rather than tested for: free when absent.
        s[9](tenant, None if row[9] is None else utc(row[9]))
        s[10](tenant, None if row[10] is None else utc(row[10]))
    # The key lifecycle (migration 011): None unless set, so tested, not caught.
    expires = row[11]
    s[11](tenant, expires if expires is None else utc(expires))
    s[12](tenant, row[12])
    expires = row[13]
    s[13](tenant, expires if expires is None else utc(expires))
    s[14](tenant, row[14])
    return tenant


def tenant_params(
    tenant: Tenant,
    *,
    now: datetime,
    api_key_encrypted: bytes | None,
    expected: datetime | None = None,
    api_key_prefix: str | None = None,
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
        "api_key_expires_at": tenant.api_key_expires_at,
        "previous_api_key_hash": None,
        "previous_api_key_expires_at": None,
        "api_key_prefix": api_key_prefix,
        "now": now,
        "api_key_encrypted": api_key_encrypted,
        "expected": expected,
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
    """A UsageRecord from a row in `_sql.USAGE_COLUMNS` order."""
    record: UsageRecord = _new(UsageRecord)
    s = _usage_setters
    s[0](record, tenant_id)
    s[1](record, row[0])
    s[2](record, row[1])
    s[3](record, row[2])
    s[4](record, row[3])
    s[5](record, row[4])
    s[6](record, row[5])
    s[7](record, row[6])
    s[8](record, row[7])
    s[9](record, row[8])
    s[10](record, utc(row[9]))
    return record


def admin_from_row(row: tuple[Any, ...]) -> AdminUser:
    """An AdminUser from a row in `_sql.ADMIN_COLUMNS` order (NULL timestamps,
    which another writer may leave, read as None)."""
    return AdminUser(
        id=row[0],
        username=row[1],
        role=row[2],
        enabled=row[3],
        created_at=None if row[4] is None else utc(row[4]),
        updated_at=None if row[5] is None else utc(row[5]),
    )


# INSERT_USAGE_BATCH's codes, by value.
OUTCOME_CODES: Final = (
    RecordOutcome.INSERTED,
    RecordOutcome.DUPLICATE,
    RecordOutcome.UNKNOWN_TENANT,
)


def usage_copy_rows(records: list[UsageRecord]) -> list[tuple[Any, ...]]:
    """COPY_USAGE_DIRECT's rows (of COPY_USAGE_DIRECT_TYPES) for validated,
    timestamped records, in order; tenant ids as UUID, each converted once (a
    batch has few)."""
    tenants: dict[str, UUID] = {}
    rows = []
    for record in records:
        tenant = tenants.get(record.tenant_id)
        if tenant is None:
            tenant = tenants[record.tenant_id] = UUID(record.tenant_id)
        rows.append(
            (
                tenant,
                record.request_id,
                record.model,
                record.provider,
                record.input_tokens,
                record.output_tokens,
                record.cost_usd,
                record.cached,
                record.latency_ms,
                record.status,
                record.timestamp,
            )
        )
    return rows


def usage_batch_rows(
    records: list[UsageRecord],
) -> tuple[list[tuple[Any, ...]], list[int], list[bool]]:
    """COPY_USAGE_BATCH's rows for validated, timestamped records: each is its
    position then its `usage_copy_rows` row.

    A (tenant_id, request_id) pair repeated in the batch is sent once (its first
    occurrence), numbered by its position among those sent. Also returns, for each
    record, that position, and whether it repeats an earlier record (see
    `batch_outcomes`).
    """
    seen: dict[tuple[str, str], int] = {}
    where: list[int] = []
    repeated: list[bool] = []
    rows: list[tuple[Any, ...]] = []
    for record, row in zip(records, usage_copy_rows(records), strict=True):
        key = (record.tenant_id, record.request_id)
        position = seen.get(key)
        if position is None:
            seen[key] = position = len(rows)
            rows.append((position, *row))
            repeated.append(False)
        else:
            repeated.append(True)
        where.append(position)
    return rows, where, repeated


def batch_outcomes(
    codes: list[int], where: list[int], repeated: list[bool]
) -> list[RecordOutcome]:
    """Each record's outcome, in input order, from the codes of the pairs sent.

    A record repeating an earlier one of its batch is a DUPLICATE, unless its
    tenant is unknown (nothing of that tenant is stored, so nothing duplicates).
    """
    outcomes = []
    for position, again in zip(where, repeated, strict=True):
        outcome = OUTCOME_CODES[codes[position]]
        if again and outcome is RecordOutcome.INSERTED:
            outcome = RecordOutcome.DUPLICATE
        outcomes.append(outcome)
    return outcomes


def summary_from_row(row: tuple[Any, ...]) -> UsageSummary:
    """A UsageSummary from a row of `_sql.SELECT_USAGE_SUMMARY` (sums of bigint
    come back as numeric)."""
    return UsageSummary(
        day=row[0],
        model=row[1],
        records=int(row[2]),
        input_tokens=int(row[3]),
        output_tokens=int(row[4]),
        cost_usd=row[5],
    )
