# Generated from _async/ by tools/gen_sync.py: do not edit by hand.
"""The repository contracts as `typing.Protocol`s: tenants, usage, admin users.

Every backend (in memory, PostgreSQL, the cache) satisfies these, with the same
results, order and errors; the differential tests hold them to it.
"""

from __future__ import annotations

import builtins
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from .._audit import AuditEvent
from .._models import AdminUser, RecordOutcome, Tenant, UsageRecord, UsageSummary


class TenantRepository(Protocol):
    """Tenants: who may call the gateway.

    Lookups never raise for odd input (empty, huge, NUL, lone surrogates, not a
    UUID): it is simply `TenantNotFound`. Writes validate first and raise
    `InvalidInput` naming the field, before anything is written.
    """

    def get_by_api_key(self, api_key: str) -> Tenant:
        """The enabled tenant whose key this is.

        Raises `TenantNotFound` for an unknown, malformed or disabled key.
        """
        ...

    def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        """As `get_by_api_key`, for callers that hashed the key already."""
        ...

    def get_by_id(self, tenant_id: str) -> Tenant:
        """The tenant, enabled or not; `TenantNotFound` if none has this id."""
        ...

    def list(self) -> builtins.list[Tenant]:
        """Every tenant, newest first (created_at DESC, then id ASC)."""
        ...

    def create(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        """Store a new tenant and return it as stored (with created_at/updated_at).

        `api_key`, when given, must hash to `tenant.api_key_hash`; a repository with
        a `KeyCipher` then stores its encryption. Raises `Conflict` when the id or
        the key hash is taken.
        """
        ...

    def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        """Replace the tenant's settings; created_at is kept, updated_at moves.

        Raises `TenantNotFound` for an unknown id and `Conflict` when the new key
        hash belongs to another tenant. A changed key hash without `api_key` drops
        the stored encryption of the old key.

        Optimistic concurrency: when `tenant.updated_at` is set (a tenant read from
        the store, modified with `dataclasses.replace`), the update applies only if
        the stored tenant still has that `updated_at`, else `StaleVersion` (a
        `Conflict`) — so a read-modify-write cannot silently undo a concurrent
        change such as a key rotation or a disable. A tenant built without
        `updated_at` overwrites.
        """
        ...

    def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
        """Enable or disable the tenant and return it as stored.

        Changes `enabled` and moves `updated_at` (as `update` does), nothing else:
        no other column is read or validated, so it works on a row that another
        writer filled with values `update` would reject. Unconditional (no version
        check): disabling must not lose a race. Raises `InvalidInput` when
        `enabled` is not a bool, `TenantNotFound` for an unknown or malformed id.
        """
        ...

    def rotate_api_key(
        self,
        tenant_id: str,
        api_key: str,
        *,
        grace: timedelta = timedelta(0),
        expires_at: datetime | None = None,
    ) -> Tenant:
        """Make `api_key` the tenant's key and return the tenant as stored.

        The old key keeps authenticating until now + `grace` by the repository's
        clock (never past its own expiry; `grace` 0: revoked at once), as
        `previous_api_key_hash` until `previous_api_key_expires_at`. One previous
        key at a time: an older previous key is revoked. The new key expires at
        `expires_at` (None: never); `api_key_prefix` shows its first 8 characters,
        and a repository with a `KeyCipher` stores its encryption (bound to the
        tenant id and the new hash). Idempotent: rotating to the current key again
        changes nothing and returns the tenant unchanged. Raises `InvalidInput`
        (`api_key`, `grace`, `expires_at`), `TenantNotFound`, and `Conflict` when
        the new key is another tenant's current or previous key.
        """
        ...

    def revoke_previous_api_key(self, tenant_id: str) -> Tenant:
        """End the grace period now: the previous key no longer authenticates.

        Returns the tenant unchanged when it has no previous key;
        `TenantNotFound` for an unknown or malformed id.
        """
        ...

    def delete(self, tenant_id: str) -> None:
        """Remove the tenant and all its usage records; `TenantNotFound` if none."""
        ...

    def reveal_api_key(self, tenant_id: str) -> str | None:
        """The tenant's current plaintext key if its encryption is stored, else None.

        A revealed key always hashes to the tenant's current `api_key_hash`: a
        stored copy of an older key (left behind by a writer that re-keyed the
        tenant without it, as the Go service does) is None, never returned. Needs
        the repository's `KeyCipher`; raises `TenantNotFound` for an unknown
        tenant and `CipherError` for a ciphertext that is not this tenant's.
        """
        ...

    def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        """Audit log entries (tenants and admin users), newest first.

        `since` keeps entries at or after it (aware datetime); `entity_id` those
        of one tenant or admin user (anything that is not an id finds none);
        `limit` (1..1000) bounds the page. The order is the log's (`id`
        descending): for the next page pass the last entry's `id` as `before`.
        """
        ...


class UsageRepository(Protocol):
    """Usage records: what each request consumed and cost."""

    def record(self, record: UsageRecord) -> bool:
        """Store the record; False if (tenant_id, request_id) was recorded already.

        Raises `TenantNotFound` when the tenant does not exist.
        """
        ...

    def record_many(
        self, records: builtins.list[UsageRecord]
    ) -> builtins.list[RecordOutcome]:
        """Store a batch in one transaction; one outcome per record, in input order.

        INSERTED, DUPLICATE (stored before, or earlier in this batch) or
        UNKNOWN_TENANT; the rest of the batch is written whatever happens to its
        tenants meanwhile. An invalid record raises `InvalidInput` naming it
        (``records[3].cost_usd``) before anything is written. `StoreUnavailable`
        means nothing of the batch was committed (or, if only the answer was
        lost, all of it): retrying is safe, the batch being idempotent.
        """
        ...

    def get_tenant_usage(
        self, tenant_id: str, since: datetime
    ) -> builtins.list[UsageRecord]:
        """Records with timestamp >= since, newest first, then by request_id."""
        ...

    def get_tenant_total_cost(self, tenant_id: str, since: datetime) -> Decimal:
        """Exact sum of cost_usd since `since` (inclusive); Decimal("0") if none."""
        ...

    def get_tenant_usage_summary(
        self, tenant_id: str, since: date, until: date | None = None
    ) -> builtins.list[UsageSummary]:
        """Usage per UTC day and model for days `since` <= day < `until` (no end
        when None), day ascending then model (by code point).

        Read from the daily totals (days x models, never a scan of rows), so it
        counts records `prune_usage` removed. `since` and `until` are dates: a
        datetime is `InvalidInput`.
        """
        ...

    def prune_usage(self, before: datetime) -> int:
        """Delete records older than `before`; return how many.

        Deletes in batches, each its own short transaction that skips rows other
        transactions hold, so writers are never blocked. The daily totals keep
        counting the pruned records: budgets (`get_tenant_total_cost` from a
        midnight) and summaries do not change. A `since` inside a pruned day
        counts that day's remaining rows only.
        """
        ...


class AdminUserRepository(Protocol):
    """Operators of the admin API: the Go service's `admin_users`, shared.

    Lookups never raise for odd input: it is `AdminUserNotFound`. Writes validate
    first (`InvalidInput` naming the field) and are audited like tenants'.
    """

    def create(self, username: str, password: str, role: str = "viewer") -> AdminUser:
        """A new, enabled admin user with a bcrypt hash of `password`.

        Raises `Conflict` when the username is taken, `InvalidInput` for a
        username (1..255 characters), role or password (1..72 bytes) refused.
        """
        ...

    def authenticate(self, username: str, password: str) -> AdminUser:
        """The enabled user whose password this is; else `InvalidCredentials`,
        the same for a wrong password, an unknown or a disabled user, after the
        same work (one bcrypt verification)."""
        ...

    def get_by_id(self, user_id: str) -> AdminUser:
        """The user, enabled or not; `AdminUserNotFound` if none has this id."""
        ...

    def get_by_username(self, username: str) -> AdminUser:
        """The user, enabled or not; `AdminUserNotFound` if none has this name."""
        ...

    def list(self) -> builtins.list[AdminUser]:
        """Every admin user, newest first (created_at DESC, then id ASC)."""
        ...

    def update(self, user: AdminUser) -> AdminUser:
        """Set the user's `username`, `role` and `enabled` (updated_at moves).

        Raises `AdminUserNotFound` for an unknown id, `Conflict` when the new
        username is another user's.
        """
        ...

    def set_password(self, user_id: str, password: str) -> AdminUser:
        """Replace the user's password hash; `AdminUserNotFound` if none."""
        ...

    def delete(self, user_id: str) -> None:
        """Remove the user; `AdminUserNotFound` if none has this id."""
        ...

    def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        """The audit log, as `AsyncTenantRepository.list_audit` reads it."""
        ...
