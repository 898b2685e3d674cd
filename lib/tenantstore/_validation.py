"""Every boundary check and normalisation, shared by all backends.

Writes pass through `tenant_for_write` / `usage_for_write`, which either return a
normalised copy (money quantized ROUND_HALF_EVEN, datetimes in UTC, sequences as
tuples) or raise `InvalidInput` naming the field. Lookups never raise for odd input:
`is_canonical_id` and `is_key_hash` let a backend answer "not found" without asking
the database. Nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Final

from ._models import AdminUser, Tenant, UsageRecord
from ._roles import ROLES
from .errors import InvalidInput

__all__ = [
    "BUDGET_MAX",
    "COST_MAX",
    "INT_MAX",
    "admin_user_for_write",
    "grace_period",
    "is_canonical_id",
    "is_key_hash",
    "is_username",
    "key_prefix",
    "money",
    "tenant_for_write",
    "usage_batch_for_write",
    "usage_for_write",
    "utc_datetime",
    "utc_day",
]

INT_MAX: Final = 2**31 - 1
# budget_usd is numeric(10,2) (the original column); cost_usd is numeric(20,10).
BUDGET_MAX: Final = Decimal("99999999.99")
COST_MAX: Final = Decimal("9999999999.9999999999")
_CENTS: Final = Decimal("0.01")
_COST_STEP: Final = Decimal("1E-10")

_UUID_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
_HASH_RE: Final = re.compile(r"[0-9a-f]{64}")
_uuid_match = _UUID_RE.fullmatch
_hash_match = _HASH_RE.fullmatch


def is_canonical_id(value: object) -> bool:
    """True for a lowercase hyphenated UUID string: the only form ids take."""
    return type(value) is str and _uuid_match(value) is not None


def is_key_hash(value: object) -> bool:
    """True for 64 lowercase hex digits: the only form key hashes take."""
    return type(value) is str and _hash_match(value) is not None


def canonical_id(field: str, value: object) -> str:
    if not is_canonical_id(value):
        raise InvalidInput(field, "must be a lowercase hyphenated UUID string")
    assert isinstance(value, str)
    return value


def utf8(field: str, value: str) -> bytes:
    """`value` encoded as UTF-8; `InvalidInput` for lone surrogates.

    Raised outside the handler on purpose: a UnicodeEncodeError's args hold the
    whole string (an API key, perhaps) and must not ride along as __context__.
    """
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        pass
    raise InvalidInput(field, "must be valid Unicode (no lone surrogates)")


def text(field: str, value: object, limit: int, *, allow_blank: bool = True) -> str:
    """A str of at most `limit` characters, without NUL, encodable as UTF-8."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a str, not {type(value).__name__}")
    if len(value) > limit:
        raise InvalidInput(field, f"must be at most {limit} characters")
    if "\x00" in value:
        raise InvalidInput(field, "must not contain NUL characters")
    utf8(field, value)
    if not allow_blank and not value.strip():
        raise InvalidInput(field, "must not be blank")
    return str(value)


def text_tuple(field: str, value: object, limit: int) -> tuple[str, ...]:
    """A list or tuple of non-empty texts, kept in order."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidInput(field, "must be a list or tuple of str")
    return tuple(
        text(f"{field}[{i}]", item, limit, allow_blank=False)
        for i, item in enumerate(value)
    )


def integer(field: str, value: object) -> int:
    """An int (not a bool) in 0 ..= 2**31 - 1, the range of an integer column."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be an int, not {type(value).__name__}")
    if not 0 <= value <= INT_MAX:
        raise InvalidInput(field, f"must be between 0 and {INT_MAX}")
    return int(value)


def boolean(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(field, f"must be a bool, not {type(value).__name__}")
    return value


def money(field: str, value: object, step: Decimal, maximum: Decimal) -> Decimal:
    """A non-negative finite amount, quantized to `step` with ROUND_HALF_EVEN.

    Accepts Decimal, int, str, or float (taken by its shortest repr, so 0.1 is
    Decimal("0.1"), not the binary fraction).
    """
    if isinstance(value, bool):
        raise InvalidInput(field, "must be a Decimal, int, str or float, not bool")
    try:
        if isinstance(value, Decimal):
            amount = value
        elif isinstance(value, int):
            amount = Decimal(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(field, "must be finite")
            amount = Decimal(repr(value))
        elif isinstance(value, str):
            amount = Decimal(value)
        else:
            raise InvalidInput(
                field,
                f"must be a Decimal, int, str or float, not {type(value).__name__}",
            )
    except InvalidOperation:
        raise InvalidInput(field, "is not a number") from None
    if not amount.is_finite():
        raise InvalidInput(field, "must be finite (not NaN or infinity)")
    if amount < 0:
        raise InvalidInput(field, "must not be negative")
    if amount >= maximum + 1:  # also keeps quantize within the context's precision
        raise InvalidInput(field, f"must be at most {maximum}")
    # Compared after rounding: 99999999.994 is a valid budget of 99999999.99.
    quantized = amount.quantize(step, rounding=ROUND_HALF_EVEN)
    if quantized > maximum:
        raise InvalidInput(field, f"must be at most {maximum}")
    # -0 compares equal to 0 but prints "-0.00": store one zero.
    return abs(quantized)


def utc_datetime(field: str, value: object) -> datetime:
    """A timezone-aware datetime, converted to UTC (naive is an error)."""
    if not isinstance(value, datetime):
        raise InvalidInput(field, f"must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(field, "must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(field, "is out of the representable range") from None


def utc_day(field: str, value: object) -> date:
    """A `date` (a UTC day); a datetime is an error, not silently cut to its day."""
    if isinstance(value, datetime) or not isinstance(value, date):
        raise InvalidInput(
            field, f"must be a date (a UTC day), not {type(value).__name__}"
        )
    return value


def tenant_for_write(tenant: object) -> Tenant:
    """Validate and normalise a tenant for create or update.

    `created_at` and `updated_at` are dropped (set to None): the store sets them.
    """
    if not isinstance(tenant, Tenant):
        raise InvalidInput("tenant", f"must be a Tenant, not {type(tenant).__name__}")
    default_provider = tenant.default_provider
    if default_provider is not None:
        default_provider = text("default_provider", default_provider, 50)
    if not is_key_hash(tenant.api_key_hash):
        raise InvalidInput(
            "api_key_hash", "must be 64 lowercase hex digits (use hash_api_key)"
        )
    return Tenant(
        id=canonical_id("id", tenant.id),
        name=text("name", tenant.name, 255, allow_blank=False),
        api_key_hash=tenant.api_key_hash,
        budget_usd=money("budget_usd", tenant.budget_usd, _CENTS, BUDGET_MAX),
        rate_limit_rpm=integer("rate_limit_rpm", tenant.rate_limit_rpm),
        allowed_models=text_tuple("allowed_models", tenant.allowed_models, 255),
        default_provider=default_provider,
        fallback_providers=text_tuple(
            "fallback_providers", tenant.fallback_providers, 50
        ),
        enabled=boolean("enabled", tenant.enabled),
        api_key_expires_at=optional_datetime(
            "api_key_expires_at", tenant.api_key_expires_at
        ),
    )


def optional_datetime(field: str, value: object) -> datetime | None:
    """None, or `utc_datetime`."""
    return None if value is None else utc_datetime(field, value)


def grace_period(value: object) -> timedelta:
    """A rotation's grace: a `timedelta` >= 0."""
    if not isinstance(value, timedelta):
        raise InvalidInput("grace", f"must be a timedelta, not {type(value).__name__}")
    if value < timedelta(0):
        raise InvalidInput("grace", "must be >= 0")
    return value


def grace_until(now: datetime, grace: timedelta) -> datetime:
    """When a grace of `grace` from `now` ends."""
    try:
        return now + grace
    except OverflowError:
        raise InvalidInput("grace", "reaches past the representable range") from None


def key_prefix(api_key: str) -> str | None:
    """What `Tenant.api_key_prefix` shows of a (hashable) key: its first 8
    characters, or None when they hold a NUL (no text column can)."""
    prefix = str.__str__(api_key)[:8]
    return None if "\x00" in prefix else prefix


def expected_version(tenant: Tenant) -> datetime | None:
    """The `updated_at` an update must still find in the store, if the caller has one.

    A tenant read from a store carries its `updated_at`; passing it back to `update`
    makes the update conditional on nobody having changed the tenant since.
    """
    if tenant.updated_at is None:
        return None
    return utc_datetime("updated_at", tenant.updated_at)


def usage_for_write(record: object, now: datetime | None = None) -> UsageRecord:
    """Validate and normalise a usage record; a missing timestamp becomes `now`.

    With `now` None, a missing timestamp stays None (the caller stamps it later).
    """
    if not isinstance(record, UsageRecord):
        raise InvalidInput(
            "record", f"must be a UsageRecord, not {type(record).__name__}"
        )
    timestamp = record.timestamp
    timestamp = now if timestamp is None else utc_datetime("timestamp", timestamp)
    return UsageRecord(
        tenant_id=canonical_id("tenant_id", record.tenant_id),
        request_id=text("request_id", record.request_id, 255, allow_blank=False),
        model=text("model", record.model, 255),
        provider=text("provider", record.provider, 50),
        input_tokens=integer("input_tokens", record.input_tokens),
        output_tokens=integer("output_tokens", record.output_tokens),
        cost_usd=money("cost_usd", record.cost_usd, _COST_STEP, COST_MAX),
        cached=boolean("cached", record.cached),
        latency_ms=integer("latency_ms", record.latency_ms),
        status=text("status", record.status, 20, allow_blank=False),
        timestamp=timestamp,
    )


USERNAME_MAX: Final = 255  # admin_users.username is varchar(255)


def is_username(value: object) -> bool:
    """True for a str that could be a stored username (lookups of anything else
    find nobody, without a query)."""
    return (
        type(value) is str
        and 0 < len(value) <= USERNAME_MAX
        and "\x00" not in value
        and _encodable(value)
    )


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def role(field: str, value: object) -> str:
    """One of the roles the Go service knows: "admin", "editor", "viewer"."""
    if type(value) is not str or value not in ROLES:
        raise InvalidInput(field, f"must be one of {', '.join(ROLES)}")
    return value


def admin_user_for_write(user: object) -> AdminUser:
    """Validate an admin user for create or update (timestamps dropped)."""
    if not isinstance(user, AdminUser):
        raise InvalidInput("user", f"must be an AdminUser, not {type(user).__name__}")
    return AdminUser(
        id=canonical_id("id", user.id),
        username=text("username", user.username, USERNAME_MAX, allow_blank=False),
        role=role("role", user.role),
        enabled=boolean("enabled", user.enabled),
    )


def usage_batch_for_write(records: object, now: datetime) -> list[UsageRecord]:
    """Validate every record of a batch, or raise for the first invalid one.

    The field is named with the record's position (``records[3].cost_usd``), so
    nothing of the batch is written when any of it is invalid.
    """
    if isinstance(records, str | bytes | UsageRecord) or not isinstance(
        records, Sequence
    ):
        raise InvalidInput("records", "must be a list or tuple of UsageRecord")
    valid = []
    for position, record in enumerate(records):
        try:
            valid.append(usage_for_write(record, now))
        except InvalidInput as exc:
            field = f"records[{position}]"
            if exc.field != "record":
                field = f"{field}.{exc.field}"
            error = InvalidInput(field, exc.rule)
        else:
            continue
        raise error  # outside the handler: no chain to the inner error
    return valid
