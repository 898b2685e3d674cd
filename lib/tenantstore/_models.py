"""The domain: `Tenant`, `UsageRecord`, `UsageSummary`, `RecordOutcome` and
`AdminUser`, frozen and slotted.

Constructing one checks nothing: the repositories validate and normalise every value
on the way in (see `validation`), identically for every backend, and return new
instances with what the store set (`created_at`, `updated_at`, a default timestamp).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

__all__ = ["AdminUser", "RecordOutcome", "Tenant", "UsageRecord", "UsageSummary"]

_ZERO = Decimal("0")


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, kw_only=True)
class Tenant:
    """Who may call the gateway, and within which limits.

    `id` is a canonical (lowercase, hyphenated) UUID string, generated when omitted.
    `api_key_hash` is `hash_api_key(key)`: the plaintext key is never a field.
    `created_at` and `updated_at` are set by the store from its clock. On create
    both are ignored; on update `updated_at`, when set, is the version the caller
    read: the update applies only if the store still has it (else `Conflict`).

    The key lifecycle (all None by default): the current key authenticates while
    the store's clock is before `api_key_expires_at` (None: it never expires), the
    key a rotation replaced (`previous_api_key_hash`) while it is before
    `previous_api_key_expires_at`. `api_key_prefix` is the first 8 characters of
    the plaintext key, for display, when the store was given it. The previous key
    and the prefix are set by the store (`rotate_api_key`, `create(api_key=...)`),
    never taken from the caller's tenant; `api_key_expires_at` is the caller's.
    """

    __module__ = "tenantstore"

    name: str
    api_key_hash: str = field(repr=False)
    id: str = field(default_factory=_new_id)
    budget_usd: Decimal = _ZERO
    rate_limit_rpm: int = 60
    allowed_models: tuple[str, ...] = ()
    default_provider: str | None = None
    fallback_providers: tuple[str, ...] = ()
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None
    api_key_expires_at: datetime | None = None
    previous_api_key_hash: str | None = field(default=None, repr=False)
    previous_api_key_expires_at: datetime | None = None
    api_key_prefix: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """What one gateway request consumed and cost.

    `(tenant_id, request_id)` identifies a record: recording it twice stores it once.
    `timestamp` defaults to the store's clock when left as None.
    """

    __module__ = "tenantstore"

    tenant_id: str
    request_id: str
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = _ZERO
    cached: bool = False
    latency_ms: int = 0
    status: str = "success"
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminUser:
    """An operator of the admin API (the Go service's `admin_users` row).

    `role` is "admin", "editor" or "viewer" (see `has_permission`). The password
    hash is not a field: it never leaves the repository, so no repr, log line,
    pickle or `dataclasses.asdict` can carry it. `created_at` and `updated_at` are
    set by the store from its clock; `update` changes `username`, `role` and
    `enabled`, and `set_password` the password.
    """

    __module__ = "tenantstore"

    username: str
    role: str = "viewer"
    id: str = field(default_factory=_new_id)
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None


class RecordOutcome(enum.Enum):
    """What `record_many` did with one record of its batch."""

    INSERTED = "inserted"
    """Stored now."""
    DUPLICATE = "duplicate"
    """Its (tenant_id, request_id) was stored before, or earlier in the same batch."""
    UNKNOWN_TENANT = "unknown_tenant"
    """No tenant has its tenant_id (at the moment the batch was written)."""


RecordOutcome.__module__ = "tenantstore"  # EnumType sets it after the class body


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageSummary:
    """One tenant's usage of one model on one UTC day, from the daily totals."""

    __module__ = "tenantstore"

    day: date
    model: str
    records: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
