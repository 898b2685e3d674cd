"""The in-memory backend: a product with the PostgreSQL backend's exact contract.

Same validation, clock, order, idempotency, errors and audit log; thread-safe
(writes take one lock, key lookups read without it). There are no built-in tenants,
keys or admin users. The async twins call the sync methods directly: nothing here
blocks beyond that short lock, except bcrypt, which the async admin twin runs on a
worker thread.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import threading
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any, ClassVar

from ._audit import AuditEvent, AuditLog, actor_name, audit_query, current_actor
from ._cipher import KeyCipher, encrypted_key_for_write, rotation_for_write
from ._clock import SYSTEM_CLOCK, Clock
from ._keys import key_expiry, key_matches_hash, lookup_hash
from ._models import AdminUser, RecordOutcome, Tenant, UsageRecord, UsageSummary
from ._passwords import hash_password, verify_password
from ._rows import utc
from ._validation import (
    admin_user_for_write,
    boolean,
    expected_version,
    grace_until,
    is_canonical_id,
    is_key_hash,
    is_username,
    key_prefix,
    tenant_for_write,
    usage_batch_for_write,
    usage_for_write,
    utc_datetime,
    utc_day,
)
from .errors import (
    AdminUserNotFound,
    CipherError,
    Conflict,
    InvalidCredentials,
    StaleVersion,
    TenantNotFound,
)

__all__ = [
    "AsyncInMemoryAdminUserRepository",
    "AsyncInMemoryTenantRepository",
    "AsyncInMemoryUsageRepository",
    "InMemoryAdminUserRepository",
    "InMemoryTenantRepository",
    "InMemoryUsageRepository",
]

_MICROSECOND = timedelta(microseconds=1)
_ZERO = Decimal("0")


class _State:
    """Everything one in-memory store holds, under one lock."""

    __slots__ = (
        "admins",
        "audit",
        "by_hash",
        "by_username",
        "encrypted",
        "lock",
        "password_hashes",
        "pruned",
        "tenants",
        "usage",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tenants: dict[str, Tenant] = {}
        self.by_hash: dict[str, str] = {}
        self.encrypted: dict[str, bytes] = {}
        self.usage: dict[str, dict[str, UsageRecord]] = {}
        self.admins: dict[str, AdminUser] = {}
        self.by_username: dict[str, str] = {}
        self.password_hashes: dict[str, str] = {}
        self.audit = AuditLog()
        # What prune_usage removed, still counted as PostgreSQL's daily totals
        # count it: tenant -> (UTC day, model) -> [records, in, out, cost].
        self.pruned: dict[str, dict[tuple[date, str], list[Any]]] = {}


def _whole_days_from(since: datetime) -> date | None:
    """The first UTC day wholly at or after `since` (None past date.max), as
    PostgreSQL's total-cost query splits a partial first day from whole days."""
    day = since.date()
    if since.hour or since.minute or since.second or since.microsecond:
        return None if day == date.max else day + timedelta(days=1)
    return day


def _exact_sum(amounts: Iterable[Decimal]) -> Decimal:
    with localcontext() as exact:
        exact.prec = 60  # far beyond any sum of numeric(20,10) values: exact
        return sum(amounts, _ZERO)


def _not_found() -> TenantNotFound:
    return TenantNotFound("no such tenant")


def _conflict() -> Conflict:
    return Conflict("a tenant with this id or api_key_hash already exists")


def _live_hashes(tenant: Tenant) -> set[str]:
    """The hashes a tenant holds in `by_hash`: current, and previous while set
    (expired or not, as PostgreSQL's tenant_key_hashes holds them)."""
    hashes = {tenant.api_key_hash}
    if tenant.previous_api_key_hash is not None:
        hashes.add(tenant.previous_api_key_hash)
    return hashes


def _reindex(state: _State, old: Tenant | None, new: Tenant | None) -> None:
    before = set() if old is None else _live_hashes(old)
    after = set() if new is None else _live_hashes(new)
    for key_hash in before - after:
        del state.by_hash[key_hash]
    if new is not None:
        for key_hash in after - before:
            state.by_hash[key_hash] = new.id


def rotation_times(
    old: Tenant, now: datetime, grace_until: datetime
) -> tuple[str | None, datetime | None]:
    """The previous key and its end after a rotation of `old` at `now` (as
    PostgreSQL's ROTATE_API_KEY computes them): the old key, while it would
    still authenticate, until the grace ends or it expires, whichever is first."""
    expires = old.api_key_expires_at
    if grace_until <= now or (expires is not None and expires <= now):
        return None, None
    return old.api_key_hash, grace_until if expires is None else min(
        grace_until, expires
    )


def _tenant_row(state: _State, tenant: Tenant | None) -> dict[str, Any] | None:
    """The tenant as its `tenants` row: what the audit trigger diffs. Called
    under the lock, before the state changes for the old row."""
    if tenant is None:
        return None
    row = {f.name: getattr(tenant, f.name) for f in dataclasses.fields(Tenant)}
    row["api_key_encrypted"] = state.encrypted.get(tenant.id)
    return row


def _admin_row(state: _State, user: AdminUser | None) -> dict[str, Any] | None:
    """The admin user as its `admin_users` row (see `_tenant_row`)."""
    if user is None:
        return None
    row = {f.name: getattr(user, f.name) for f in dataclasses.fields(AdminUser)}
    row["password_hash"] = state.password_hashes.get(user.id)
    return row


def _list_audit(
    state: _State,
    since: datetime | None,
    entity_id: str | None,
    limit: int,
    before: int | None,
) -> builtins.list[AuditEvent]:
    start, before = audit_query(since, entity_id, limit, before)
    if entity_id is not None and not is_canonical_id(entity_id):
        return []
    with state.lock:
        return state.audit.select(start, entity_id, limit, before)


class _Audited:
    """A repository writing rows of `_table`: each write appends its audit event
    to the store's log, as the PostgreSQL triggers do for theirs."""

    _table: ClassVar[str]
    _state: _State
    _actor: str | None

    def _audit(
        self,
        now: datetime,
        action: str,
        entity_id: str,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
    ) -> None:
        self._state.audit.append(
            at=now,
            table=self._table,
            action=action,
            entity_id=entity_id,
            actor=current_actor(self._actor),
            old=old,
            new=new,
        )


class InMemoryTenantRepository(_Audited):
    """Tenants in a dict: the PostgreSQL backend's contract without a database.

    `clock` stamps created_at/updated_at; `cipher` encrypts keys passed to writes;
    `actor` is recorded in the audit log as who wrote (unless `acting_as` names
    someone else). Every tenant held here passed validation: unlike a PostgreSQL
    table, which the Go service or psql may write around it, this backend cannot
    hold a row with values our rules reject (rpm -1, a blank name, NULLs), so
    reads of such rows are a PostgreSQL-only concern (tests/test_foreign_rows.py).
    """

    __module__ = "tenantstore"
    _table = "tenants"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        cipher: KeyCipher | None = None,
        actor: str | None = None,
    ) -> None:
        self._state = _State()
        self._clock = clock or SYSTEM_CLOCK
        self._cipher = cipher
        self._actor = None if actor is None else actor_name(actor)

    def get_by_api_key(self, api_key: str) -> Tenant:
        api_key_hash = lookup_hash(api_key)
        if api_key_hash is None:
            raise _not_found()
        return self._enabled_by_hash(api_key_hash)

    def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        if not is_key_hash(api_key_hash):
            raise _not_found()
        return self._enabled_by_hash(api_key_hash)

    def _enabled_by_hash(self, api_key_hash: str) -> Tenant:
        state = self._state
        tenant_id = state.by_hash.get(api_key_hash)
        tenant = None if tenant_id is None else state.tenants.get(tenant_id)
        # Read without the lock: re-check that the pair we read still belongs together.
        if tenant is None or not tenant.enabled:
            raise _not_found()
        expires = key_expiry(tenant, api_key_hash)
        if expires is None or (
            isinstance(expires, datetime) and utc(self._clock.now()) < expires
        ):
            return tenant
        raise _not_found()

    def get_by_id(self, tenant_id: str) -> Tenant:
        tenant = (
            self._state.tenants.get(tenant_id) if is_canonical_id(tenant_id) else None
        )
        if tenant is None:
            raise _not_found()
        return tenant

    def list(self) -> builtins.list[Tenant]:
        with self._state.lock:
            tenants = builtins.list(self._state.tenants.values())
        tenants.sort(key=lambda t: t.id)
        tenants.sort(key=lambda t: t.created_at or datetime.min, reverse=True)
        return tenants

    def create(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        tenant = tenant_for_write(tenant)
        encrypted = encrypted_key_for_write(
            tenant.api_key_hash, tenant.id, api_key, self._cipher
        )
        state = self._state
        with state.lock:
            if tenant.id in state.tenants or tenant.api_key_hash in state.by_hash:
                raise _conflict()
            now = utc(self._clock.now())
            stored = dataclasses.replace(
                tenant,
                created_at=now,
                updated_at=now,
                api_key_prefix=None if api_key is None else key_prefix(api_key),
            )
            state.tenants[stored.id] = stored
            state.by_hash[stored.api_key_hash] = stored.id
            if encrypted is not None:
                state.encrypted[stored.id] = encrypted
            self._audit(now, "INSERT", stored.id, None, _tenant_row(state, stored))
            return stored

    def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        expected = expected_version(tenant)
        tenant = tenant_for_write(tenant)
        encrypted = encrypted_key_for_write(
            tenant.api_key_hash, tenant.id, api_key, self._cipher
        )
        state = self._state
        with state.lock:
            old = state.tenants.get(tenant.id)
            if old is None:
                raise _not_found()
            if expected is not None and old.updated_at != expected:
                raise StaleVersion()
            owner = state.by_hash.get(tenant.api_key_hash)
            if owner is not None and owner != tenant.id:
                raise _conflict()
            assert old.updated_at is not None
            before = _tenant_row(state, old)
            now = utc(self._clock.now())
            if api_key is not None:
                prefix = key_prefix(api_key)
            elif old.api_key_hash == tenant.api_key_hash:
                prefix = old.api_key_prefix
            else:
                prefix = None
            # The previous key is rotation's: an update keeps it as it is.
            stored = dataclasses.replace(
                tenant,
                created_at=old.created_at,
                updated_at=max(now, old.updated_at + _MICROSECOND),
                previous_api_key_hash=old.previous_api_key_hash,
                previous_api_key_expires_at=old.previous_api_key_expires_at,
                api_key_prefix=prefix,
            )
            _reindex(state, old, stored)
            state.tenants[stored.id] = stored
            if api_key is not None or old.api_key_hash != stored.api_key_hash:
                # A new key replaces the stored encryption; a new hash without the
                # key makes the old encryption meaningless.
                if encrypted is None:
                    state.encrypted.pop(stored.id, None)
                else:
                    state.encrypted[stored.id] = encrypted
            self._audit(now, "UPDATE", stored.id, before, _tenant_row(state, stored))
            return stored

    def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
        enabled = boolean("enabled", enabled)
        if not is_canonical_id(tenant_id):
            raise _not_found()
        state = self._state
        with state.lock:
            old = state.tenants.get(tenant_id)
            if old is None:
                raise _not_found()
            assert old.updated_at is not None
            now = utc(self._clock.now())
            stored = dataclasses.replace(
                old,
                enabled=enabled,
                updated_at=max(now, old.updated_at + _MICROSECOND),
            )
            state.tenants[tenant_id] = stored
            self._audit(
                now,
                "UPDATE",
                tenant_id,
                _tenant_row(state, old),
                _tenant_row(state, stored),
            )
            return stored

    def rotate_api_key(
        self,
        tenant_id: str,
        api_key: str,
        *,
        grace: timedelta = timedelta(0),
        expires_at: datetime | None = None,
    ) -> Tenant:
        api_key_hash, prefix, encrypted, grace, expires_at = rotation_for_write(
            tenant_id, api_key, grace, expires_at, self._cipher
        )
        if not is_canonical_id(tenant_id):
            raise _not_found()
        now = utc(self._clock.now())
        grace_end = grace_until(now, grace)
        state = self._state
        with state.lock:
            old = state.tenants.get(tenant_id)
            if old is None:
                raise _not_found()
            if old.api_key_hash == api_key_hash:
                return old  # a retried rotation: nothing to revoke
            owner = state.by_hash.get(api_key_hash)
            if owner is not None and owner != tenant_id:
                raise _conflict()
            previous, previous_expires = rotation_times(old, now, grace_end)
            assert old.updated_at is not None
            stored = dataclasses.replace(
                old,
                api_key_hash=api_key_hash,
                previous_api_key_hash=previous,
                previous_api_key_expires_at=previous_expires,
                api_key_expires_at=expires_at,
                api_key_prefix=prefix,
                updated_at=max(now, old.updated_at + _MICROSECOND),
            )
            before = _tenant_row(state, old)
            _reindex(state, old, stored)
            state.tenants[tenant_id] = stored
            if encrypted is None:
                state.encrypted.pop(tenant_id, None)
            else:
                state.encrypted[tenant_id] = encrypted
            self._audit(now, "UPDATE", tenant_id, before, _tenant_row(state, stored))
            return stored

    def revoke_previous_api_key(self, tenant_id: str) -> Tenant:
        if not is_canonical_id(tenant_id):
            raise _not_found()
        state = self._state
        with state.lock:
            old = state.tenants.get(tenant_id)
            if old is None:
                raise _not_found()
            if old.previous_api_key_hash is None:
                return old
            assert old.updated_at is not None
            now = utc(self._clock.now())
            stored = dataclasses.replace(
                old,
                previous_api_key_hash=None,
                previous_api_key_expires_at=None,
                updated_at=max(now, old.updated_at + _MICROSECOND),
            )
            _reindex(state, old, stored)
            state.tenants[tenant_id] = stored
            self._audit(
                now,
                "UPDATE",
                tenant_id,
                _tenant_row(state, old),
                _tenant_row(state, stored),
            )
            return stored

    def delete(self, tenant_id: str) -> None:
        if not is_canonical_id(tenant_id):
            raise _not_found()
        state = self._state
        with state.lock:
            tenant = state.tenants.get(tenant_id)
            if tenant is None:
                raise _not_found()
            before = _tenant_row(state, tenant)
            del state.tenants[tenant_id]
            _reindex(state, tenant, None)
            state.encrypted.pop(tenant_id, None)
            state.usage.pop(tenant_id, None)
            state.pruned.pop(tenant_id, None)
            self._audit(utc(self._clock.now()), "DELETE", tenant_id, before, None)

    def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return _list_audit(self._state, since, entity_id, limit, before)

    def reveal_api_key(self, tenant_id: str) -> str | None:
        tenant = self.get_by_id(tenant_id)
        encrypted = self._state.encrypted.get(tenant_id)
        if encrypted is None:
            return None
        if self._cipher is None:
            raise CipherError("this repository has no KeyCipher to decrypt with")
        api_key = self._cipher.decrypt(encrypted, tenant_id)
        # Writes here drop a copy whose key is replaced, so this holds already; it
        # is checked anyway so that both backends answer by the same rule.
        return api_key if key_matches_hash(api_key, tenant.api_key_hash) else None


class InMemoryUsageRepository:
    """Usage records kept beside `tenants`' tenants (deleting one drops its usage)."""

    __module__ = "tenantstore"

    def __init__(
        self, tenants: InMemoryTenantRepository, *, clock: Clock | None = None
    ) -> None:
        self._state = tenants._state
        self._clock = clock or tenants._clock

    def record(self, record: UsageRecord) -> bool:
        record = usage_for_write(record, utc(self._clock.now()))
        state = self._state
        with state.lock:
            if record.tenant_id not in state.tenants:
                raise _not_found()
            records = state.usage.setdefault(record.tenant_id, {})
            if record.request_id in records:
                return False
            records[record.request_id] = record
            return True

    def record_many(
        self, records: builtins.list[UsageRecord]
    ) -> builtins.list[RecordOutcome]:
        records = usage_batch_for_write(records, utc(self._clock.now()))
        return self._record_many_validated(records)

    def _record_many_validated(
        self, records: builtins.list[UsageRecord]
    ) -> builtins.list[RecordOutcome]:
        """`record_many` for records `usage_for_write` returned (the writer's)."""
        state = self._state
        outcomes = []
        with state.lock:  # one lock: the batch is one transaction
            for record in records:
                if record.tenant_id not in state.tenants:
                    outcomes.append(RecordOutcome.UNKNOWN_TENANT)
                    continue
                stored = state.usage.setdefault(record.tenant_id, {})
                if record.request_id in stored:
                    outcomes.append(RecordOutcome.DUPLICATE)
                    continue
                stored[record.request_id] = record
                outcomes.append(RecordOutcome.INSERTED)
        return outcomes

    def get_tenant_usage(
        self, tenant_id: str, since: datetime
    ) -> builtins.list[UsageRecord]:
        since = utc_datetime("since", since)
        if not is_canonical_id(tenant_id):  # any other value is nobody's id
            return []
        with self._state.lock:
            records = self._state.usage.get(tenant_id)
            found = (
                []
                if records is None
                else [
                    r
                    for r in records.values()
                    if r.timestamp is not None and r.timestamp >= since
                ]
            )
        found.sort(key=lambda r: r.request_id)
        found.sort(key=lambda r: r.timestamp or since, reverse=True)
        return found

    def get_tenant_total_cost(self, tenant_id: str, since: datetime) -> Decimal:
        since = utc_datetime("since", since)
        if not is_canonical_id(tenant_id):
            return _ZERO
        whole = _whole_days_from(since)
        with self._state.lock:
            records = self._state.usage.get(tenant_id)
            costs = (
                []
                if records is None
                else [
                    r.cost_usd
                    for r in records.values()
                    if r.timestamp is not None and r.timestamp >= since
                ]
            )
            pruned = self._state.pruned.get(tenant_id)
            if pruned and whole is not None:
                costs.extend(t[3] for (day, _), t in pruned.items() if day >= whole)
        if not costs:
            return _ZERO
        return _exact_sum(costs)

    def get_tenant_usage_summary(
        self, tenant_id: str, since: date, until: date | None = None
    ) -> builtins.list[UsageSummary]:
        since = utc_day("since", since)
        if until is not None:
            until = utc_day("until", until)
        if not is_canonical_id(tenant_id):
            return []
        end = date.max if until is None else until

        def wanted(day: date) -> bool:
            return since <= day and (until is None or day < end)

        groups: dict[tuple[date, str], list[Any]] = {}
        with self._state.lock:
            for r in self._state.usage.get(tenant_id, {}).values():
                assert r.timestamp is not None
                day = r.timestamp.date()
                if wanted(day):
                    group = groups.setdefault((day, r.model), [0, 0, 0, []])
                    group[0] += 1
                    group[1] += r.input_tokens
                    group[2] += r.output_tokens
                    group[3].append(r.cost_usd)
            for key, (n, tokens_in, tokens_out, cost) in self._state.pruned.get(
                tenant_id, {}
            ).items():
                if wanted(key[0]):
                    group = groups.setdefault(key, [0, 0, 0, []])
                    group[0] += n
                    group[1] += tokens_in
                    group[2] += tokens_out
                    group[3].append(cost)
        return [
            UsageSummary(
                day=day,
                model=model,
                records=g[0],
                input_tokens=g[1],
                output_tokens=g[2],
                cost_usd=_exact_sum(g[3]),
            )
            for (day, model), g in sorted(groups.items())
        ]

    def prune_usage(self, before: datetime) -> int:
        before = utc_datetime("before", before)
        state = self._state
        pruned = 0
        with state.lock:
            for tenant_id, records in state.usage.items():
                old = [
                    r
                    for r in records.values()
                    if r.timestamp is not None and r.timestamp < before
                ]
                if not old:
                    continue
                kept = state.pruned.setdefault(tenant_id, {})
                for r in old:
                    assert r.timestamp is not None
                    del records[r.request_id]
                    key = (r.timestamp.date(), r.model)
                    total = kept.setdefault(key, [0, 0, 0, _ZERO])
                    total[0] += 1
                    total[1] += r.input_tokens
                    total[2] += r.output_tokens
                    total[3] = _exact_sum((total[3], r.cost_usd))
                pruned += len(old)
        return pruned


class AsyncInMemoryTenantRepository:
    """`InMemoryTenantRepository` for asyncio code; each call runs inline."""

    __module__ = "tenantstore"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        cipher: KeyCipher | None = None,
        actor: str | None = None,
    ) -> None:
        self.sync = InMemoryTenantRepository(clock=clock, cipher=cipher, actor=actor)

    async def get_by_api_key(self, api_key: str) -> Tenant:
        return self.sync.get_by_api_key(api_key)

    async def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        return self.sync.get_by_api_key_hash(api_key_hash)

    async def get_by_id(self, tenant_id: str) -> Tenant:
        return self.sync.get_by_id(tenant_id)

    async def list(self) -> builtins.list[Tenant]:
        return self.sync.list()

    async def create(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        return self.sync.create(tenant, api_key=api_key)

    async def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        return self.sync.update(tenant, api_key=api_key)

    async def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
        return self.sync.set_enabled(tenant_id, enabled)

    async def rotate_api_key(
        self,
        tenant_id: str,
        api_key: str,
        *,
        grace: timedelta = timedelta(0),
        expires_at: datetime | None = None,
    ) -> Tenant:
        return self.sync.rotate_api_key(
            tenant_id, api_key, grace=grace, expires_at=expires_at
        )

    async def revoke_previous_api_key(self, tenant_id: str) -> Tenant:
        return self.sync.revoke_previous_api_key(tenant_id)

    async def delete(self, tenant_id: str) -> None:
        self.sync.delete(tenant_id)

    async def reveal_api_key(self, tenant_id: str) -> str | None:
        return self.sync.reveal_api_key(tenant_id)

    async def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return self.sync.list_audit(since, entity_id, limit, before=before)


class AsyncInMemoryUsageRepository:
    """`InMemoryUsageRepository` for asyncio code; each call runs inline."""

    __module__ = "tenantstore"

    def __init__(
        self, tenants: AsyncInMemoryTenantRepository, *, clock: Clock | None = None
    ) -> None:
        self.sync = InMemoryUsageRepository(tenants.sync, clock=clock)

    async def record(self, record: UsageRecord) -> bool:
        return self.sync.record(record)

    async def record_many(
        self, records: builtins.list[UsageRecord]
    ) -> builtins.list[RecordOutcome]:
        return self.sync.record_many(records)

    async def get_tenant_usage(
        self, tenant_id: str, since: datetime
    ) -> builtins.list[UsageRecord]:
        return self.sync.get_tenant_usage(tenant_id, since)

    async def get_tenant_total_cost(self, tenant_id: str, since: datetime) -> Decimal:
        return self.sync.get_tenant_total_cost(tenant_id, since)

    async def get_tenant_usage_summary(
        self, tenant_id: str, since: date, until: date | None = None
    ) -> builtins.list[UsageSummary]:
        return self.sync.get_tenant_usage_summary(tenant_id, since, until)

    async def prune_usage(self, before: datetime) -> int:
        return self.sync.prune_usage(before)


def _no_admin() -> AdminUserNotFound:
    return AdminUserNotFound("no such admin user")


class InMemoryAdminUserRepository(_Audited):
    """Admin users in a dict: the PostgreSQL backend's contract without a database.

    Given `tenants`, it shares their store, and so their audit log, as the two
    PostgreSQL repositories share a database; else it has a store of its own.
    `clock` stamps created_at/updated_at; `actor` is as for the tenant repository.
    """

    __module__ = "tenantstore"
    _table = "admin_users"

    def __init__(
        self,
        tenants: InMemoryTenantRepository | None = None,
        *,
        clock: Clock | None = None,
        actor: str | None = None,
    ) -> None:
        self._state = _State() if tenants is None else tenants._state
        self._clock = clock or (SYSTEM_CLOCK if tenants is None else tenants._clock)
        self._actor = None if actor is None else actor_name(actor)

    def create(self, username: str, password: str, role: str = "viewer") -> AdminUser:
        user = admin_user_for_write(AdminUser(username=username, role=role))
        return self._insert(user, hash_password(password))

    def _insert(self, user: AdminUser, password_hash: str) -> AdminUser:
        state = self._state
        with state.lock:
            if user.id in state.admins or user.username in state.by_username:
                raise Conflict("an admin user with this id or username already exists")
            now = utc(self._clock.now())
            stored = dataclasses.replace(user, created_at=now, updated_at=now)
            state.admins[stored.id] = stored
            state.by_username[stored.username] = stored.id
            state.password_hashes[stored.id] = password_hash
            self._audit(now, "INSERT", stored.id, None, _admin_row(state, stored))
            return stored

    def _login(self, username: str) -> tuple[AdminUser, str] | None:
        state = self._state
        with state.lock:
            user_id = state.by_username.get(username) if is_username(username) else None
            if user_id is None:
                return None
            return state.admins[user_id], state.password_hashes[user_id]

    def authenticate(self, username: str, password: str) -> AdminUser:
        found = self._login(username)
        # One verification whatever was found (see the PostgreSQL twin).
        matches = verify_password(password, None if found is None else found[1])
        if found is None or not matches or not found[0].enabled:
            raise InvalidCredentials("invalid username or password")
        return found[0]

    def get_by_id(self, user_id: str) -> AdminUser:
        user = self._state.admins.get(user_id) if is_canonical_id(user_id) else None
        if user is None:
            raise _no_admin()
        return user

    def get_by_username(self, username: str) -> AdminUser:
        found = self._login(username)
        if found is None:
            raise _no_admin()
        return found[0]

    def list(self) -> builtins.list[AdminUser]:
        with self._state.lock:
            users = builtins.list(self._state.admins.values())
        users.sort(key=lambda u: u.id)
        users.sort(key=lambda u: u.created_at or datetime.min, reverse=True)
        return users

    def update(self, user: AdminUser) -> AdminUser:
        user = admin_user_for_write(user)
        state = self._state
        with state.lock:
            old = state.admins.get(user.id)
            if old is None:
                raise _no_admin()
            owner = state.by_username.get(user.username)
            if owner is not None and owner != user.id:
                raise Conflict("an admin user with this id or username already exists")
            return self._replace(
                old, username=user.username, role=user.role, enabled=user.enabled
            )

    def _replace(
        self, old: AdminUser, password_hash: str | None = None, **changes: Any
    ) -> AdminUser:
        """Store a changed user and audit it; under the lock."""
        state = self._state
        before = _admin_row(state, old)
        now = utc(self._clock.now())
        updated_at = now
        if old.updated_at is not None:
            updated_at = max(now, old.updated_at + _MICROSECOND)
        stored = dataclasses.replace(old, updated_at=updated_at, **changes)
        if stored.username != old.username:
            del state.by_username[old.username]
            state.by_username[stored.username] = stored.id
        state.admins[stored.id] = stored
        if password_hash is not None:
            state.password_hashes[stored.id] = password_hash
        self._audit(now, "UPDATE", stored.id, before, _admin_row(state, stored))
        return stored

    def set_password(self, user_id: str, password: str) -> AdminUser:
        return self._store_password(user_id, hash_password(password))

    def _store_password(self, user_id: str, password_hash: str) -> AdminUser:
        if not is_canonical_id(user_id):
            raise _no_admin()
        state = self._state
        with state.lock:
            old = state.admins.get(user_id)
            if old is None:
                raise _no_admin()
            return self._replace(old, password_hash)

    def delete(self, user_id: str) -> None:
        if not is_canonical_id(user_id):
            raise _no_admin()
        state = self._state
        with state.lock:
            user = state.admins.get(user_id)
            if user is None:
                raise _no_admin()
            before = _admin_row(state, user)
            del state.admins[user_id]
            del state.by_username[user.username]
            del state.password_hashes[user_id]
            self._audit(utc(self._clock.now()), "DELETE", user_id, before, None)

    def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return _list_audit(self._state, since, entity_id, limit, before)


class AsyncInMemoryAdminUserRepository:
    """`InMemoryAdminUserRepository` for asyncio code; bcrypt runs on a worker
    thread, everything else inline."""

    __module__ = "tenantstore"

    def __init__(
        self,
        tenants: AsyncInMemoryTenantRepository | None = None,
        *,
        clock: Clock | None = None,
        actor: str | None = None,
    ) -> None:
        self.sync = InMemoryAdminUserRepository(
            None if tenants is None else tenants.sync, clock=clock, actor=actor
        )

    async def create(
        self, username: str, password: str, role: str = "viewer"
    ) -> AdminUser:
        user = admin_user_for_write(AdminUser(username=username, role=role))
        password_hash = await asyncio.to_thread(hash_password, password)
        return self.sync._insert(user, password_hash)

    async def authenticate(self, username: str, password: str) -> AdminUser:
        found = self.sync._login(username)
        stored = None if found is None else found[1]
        matches = await asyncio.to_thread(verify_password, password, stored)
        if found is None or not matches or not found[0].enabled:
            raise InvalidCredentials("invalid username or password")
        return found[0]

    async def get_by_id(self, user_id: str) -> AdminUser:
        return self.sync.get_by_id(user_id)

    async def get_by_username(self, username: str) -> AdminUser:
        return self.sync.get_by_username(username)

    async def list(self) -> builtins.list[AdminUser]:
        return self.sync.list()

    async def update(self, user: AdminUser) -> AdminUser:
        return self.sync.update(user)

    async def set_password(self, user_id: str, password: str) -> AdminUser:
        # Hashed here, off the loop; the sync method would hash again inline.
        password_hash = await asyncio.to_thread(hash_password, password)
        return self.sync._store_password(user_id, password_hash)

    async def delete(self, user_id: str) -> None:
        self.sync.delete(user_id)

    async def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return self.sync.list_audit(since, entity_id, limit, before=before)
