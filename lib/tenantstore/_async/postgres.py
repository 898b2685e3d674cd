"""The PostgreSQL backend on psycopg 3 and its pool.

Statements come from `_sql` (composed once) and run prepared. Single-statement reads
and writes run as they are: on an autocommit pool connection (see `pool`) they cost
one round trip, not a BEGIN/COMMIT pair around it. Every driver error goes through
`_pgerrors.translate_error`. Inputs are validated before any connection is taken, and a
lookup that cannot match (a malformed id or hash) answers without a query.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from .. import _sql
from .._pgerrors import translate_error
from .._rows import tenant_from_row, tenant_params, usage_from_row, usage_params, utc
from ..cipher import KeyCipher, encrypted_key_for_write, rotated_key_for_write
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import MODIFIED, CipherError, StaleVersion, TenantNotFound
from ..keys import key_matches_hash, lookup_hash
from ..models import Tenant, UsageRecord
from ..validation import (
    boolean,
    expected_version,
    grace_period,
    grace_until,
    is_canonical_id,
    is_key_hash,
    key_prefix,
    optional_datetime,
    tenant_for_write,
    usage_for_write,
    utc_datetime,
)

__all__ = ["AsyncPostgresTenantRepository", "AsyncPostgresUsageRepository"]

_ZERO: Final = Decimal("0")
_ONE_DAY: Final = timedelta(days=1)


def _not_found() -> TenantNotFound:
    return TenantNotFound("no such tenant")


def _modified() -> StaleVersion:
    return StaleVersion(MODIFIED)


# What `_run` returns: the first row, all rows, or the number of rows affected.
ONE: Final = 0
ALL: Final = 1
COUNT: Final = 2


def _total_cost_query(tenant_id: str, since: datetime) -> tuple[str, dict[str, Any]]:
    """The total-cost statement and its parameters: by daily totals when possible."""
    midnight = since.replace(hour=0, minute=0, second=0, microsecond=0)
    if since != midnight:
        if midnight.date() == date.max:  # no next day to start whole days from
            return _sql.SELECT_TOTAL_COST_SINCE, {
                "tenant_id": tenant_id,
                "since": since,
            }
        midnight += _ONE_DAY
    return _sql.SELECT_TOTAL_COST_BY_DAYS, {
        "tenant_id": tenant_id,
        "since": since,
        "boundary": midnight,
        "boundary_day": midnight.date(),
    }


class _AsyncPostgres:
    """What both PostgreSQL repositories share: a pool, a clock, one way to run."""

    __slots__ = ("_clock", "_pool", "_prepare")

    def __init__(
        self, pool: AsyncConnectionPool, clock: Clock | None, prepare: bool
    ) -> None:
        self._pool = pool
        self._clock = clock or SYSTEM_CLOCK
        self._prepare = prepare

    async def _run(
        self,
        statement: str,
        params: Mapping[str, Any] | None,
        fetch: int,
        *,
        retry: bool,
    ) -> Any:
        """Run one statement on a pool connection; driver errors become ours.

        With `retry`, a statement whose connection turns out broken (the server
        restarted, a proxy dropped it: the pool cannot know until it is used) runs
        once more on a fresh connection. Only idempotent statements retry: reads,
        and the usage insert, which ON CONFLICT makes idempotent.
        """
        pool = self._pool
        while True:
            conn = None
            try:
                # getconn/putconn rather than `pool.connection()`: on an
                # autocommit connection the latter's no-op commit costs about a
                # third of the client's time on a lookup.
                conn = await pool.getconn()
                try:
                    if conn.autocommit:
                        return await self._execute(conn, statement, params, fetch)
                    # Not one of ours (see `create_async_pool`): its own transaction.
                    async with conn.transaction():
                        return await self._execute(conn, statement, params, fetch)
                finally:
                    await pool.putconn(conn)
            except psycopg.Error as exc:
                if retry and conn is not None and conn.broken:
                    retry = False
                    continue
                raise translate_error(exc) from exc

    async def _execute(
        self,
        conn: AsyncConnection[Any],
        statement: str,
        params: Mapping[str, Any] | None,
        fetch: int,
    ) -> Any:
        cur = await conn.execute(statement, params, prepare=self._prepare)
        if fetch == ONE:
            return await cur.fetchone()
        if fetch == ALL:
            return await cur.fetchall()
        return cur.rowcount


class AsyncPostgresTenantRepository(_AsyncPostgres):
    """Tenants in PostgreSQL, through a psycopg pool.

    `pool` should hand out autocommit connections (`create_async_pool` does);
    `prepare=False` suits a transaction-pooling proxy that cannot keep prepared
    statements. `clock` stamps created_at/updated_at; `cipher` encrypts keys
    passed to writes.
    """

    __module__ = "tenantstore"
    __slots__ = ("_cipher",)

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        clock: Clock | None = None,
        cipher: KeyCipher | None = None,
        prepare: bool = True,
    ) -> None:
        super().__init__(pool, clock, prepare)
        self._cipher = cipher

    async def get_by_api_key(self, api_key: str) -> Tenant:
        api_key_hash = lookup_hash(api_key)
        if api_key_hash is None:
            raise _not_found()
        return await self._enabled_by_hash(api_key_hash)

    async def get_by_api_key_hash(self, api_key_hash: str) -> Tenant:
        if not is_key_hash(api_key_hash):
            raise _not_found()
        return await self._enabled_by_hash(api_key_hash)

    async def _enabled_by_hash(self, api_key_hash: str) -> Tenant:
        row = await self._run(
            _sql.SELECT_ENABLED_BY_HASH,
            {"hash": api_key_hash, "now": utc(self._clock.now())},
            ONE,
            retry=True,
        )
        if row is None:
            raise _not_found()
        return tenant_from_row(row)

    async def get_by_id(self, tenant_id: str) -> Tenant:
        if not is_canonical_id(tenant_id):
            raise _not_found()
        row = await self._run(
            _sql.SELECT_BY_ID,
            {"id": tenant_id},
            ONE,
            retry=True,
        )
        if row is None:
            raise _not_found()
        return tenant_from_row(row)

    async def list(self) -> builtins.list[Tenant]:
        rows = await self._run(_sql.SELECT_ALL, None, ALL, retry=True)
        return [tenant_from_row(row) for row in rows]

    async def create(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        tenant = tenant_for_write(tenant)
        encrypted = encrypted_key_for_write(
            tenant.api_key_hash, tenant.id, api_key, self._cipher
        )
        params = tenant_params(
            tenant,
            now=utc(self._clock.now()),
            api_key_encrypted=encrypted,
            api_key_prefix=None if api_key is None else key_prefix(api_key),
        )
        row = await self._run(
            _sql.INSERT_TENANT,
            params,
            ONE,
            retry=False,
        )
        assert row is not None
        return tenant_from_row(row)

    async def update(self, tenant: Tenant, *, api_key: str | None = None) -> Tenant:
        expected = expected_version(tenant)
        tenant = tenant_for_write(tenant)
        encrypted = encrypted_key_for_write(
            tenant.api_key_hash, tenant.id, api_key, self._cipher
        )
        params = tenant_params(
            tenant,
            now=utc(self._clock.now()),
            api_key_encrypted=encrypted,
            expected=expected,
            api_key_prefix=None if api_key is None else key_prefix(api_key),
        )
        statement = _sql.UPDATE_TENANT[api_key is not None, expected is not None]
        row = await self._run(statement, params, ONE, retry=False)
        if row is None:
            if expected is not None:
                await self.get_by_id(tenant.id)  # TenantNotFound if it is gone
                raise _modified()
            raise _not_found()
        return tenant_from_row(row)

    async def set_enabled(self, tenant_id: str, enabled: bool) -> Tenant:
        enabled = boolean("enabled", enabled)
        if not is_canonical_id(tenant_id):
            raise _not_found()
        row = await self._run(
            _sql.SET_ENABLED,
            {"id": tenant_id, "enabled": enabled, "now": utc(self._clock.now())},
            ONE,
            retry=False,
        )
        if row is None:
            raise _not_found()
        return tenant_from_row(row)

    async def rotate_api_key(
        self,
        tenant_id: str,
        api_key: str,
        *,
        grace: timedelta = timedelta(0),
        expires_at: datetime | None = None,
    ) -> Tenant:
        api_key_hash, prefix, encrypted = rotated_key_for_write(
            tenant_id, api_key, self._cipher
        )
        grace = grace_period(grace)
        expires_at = optional_datetime("expires_at", expires_at)
        if not is_canonical_id(tenant_id):
            raise _not_found()
        now = utc(self._clock.now())
        row = await self._run(
            _sql.ROTATE_API_KEY,
            {
                "id": tenant_id,
                "hash": api_key_hash,
                "now": now,
                "grace_until": grace_until(now, grace),
                "expires_at": expires_at,
                "prefix": prefix,
                "api_key_encrypted": encrypted,
            },
            ONE,
            retry=False,
        )
        if row is None:
            # Unknown (TenantNotFound), or this key is current already: a retried
            # rotation returns the tenant as it is.
            return await self.get_by_id(tenant_id)
        return tenant_from_row(row)

    async def revoke_previous_api_key(self, tenant_id: str) -> Tenant:
        if not is_canonical_id(tenant_id):
            raise _not_found()
        row = await self._run(
            _sql.REVOKE_PREVIOUS_API_KEY,
            {"id": tenant_id, "now": utc(self._clock.now())},
            ONE,
            retry=False,
        )
        if row is None:  # unknown, or no previous key: nothing to end
            return await self.get_by_id(tenant_id)
        return tenant_from_row(row)

    async def delete(self, tenant_id: str) -> None:
        if not is_canonical_id(tenant_id):
            raise _not_found()
        deleted = await self._run(
            _sql.DELETE_TENANT,
            {"id": tenant_id},
            COUNT,
            retry=False,
        )
        if deleted == 0:
            raise _not_found()

    async def reveal_api_key(self, tenant_id: str) -> str | None:
        if not is_canonical_id(tenant_id):
            raise _not_found()
        row = await self._run(
            _sql.SELECT_ENCRYPTED_KEY,
            {"id": tenant_id},
            ONE,
            retry=True,
        )
        if row is None:
            raise _not_found()
        encrypted, api_key_hash = row
        if encrypted is None:
            return None
        if self._cipher is None:
            raise CipherError("this repository has no KeyCipher to decrypt with")
        api_key = self._cipher.decrypt(encrypted, tenant_id)
        # A writer that re-keys without our API (the Go service sets api_key_hash
        # and leaves api_key_encrypted alone) leaves a copy of a revoked key.
        return api_key if key_matches_hash(api_key, api_key_hash) else None


class AsyncPostgresUsageRepository(_AsyncPostgres):
    """Usage records in PostgreSQL; `record` is idempotent on (tenant, request)."""

    __module__ = "tenantstore"
    __slots__ = ()

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        clock: Clock | None = None,
        prepare: bool = True,
    ) -> None:
        super().__init__(pool, clock, prepare)

    async def record(self, record: UsageRecord) -> bool:
        record = usage_for_write(record, utc(self._clock.now()))
        inserted: int = await self._run(
            _sql.INSERT_USAGE,
            usage_params(record),
            COUNT,
            retry=True,
        )
        return inserted == 1

    async def get_tenant_usage(
        self, tenant_id: str, since: datetime
    ) -> builtins.list[UsageRecord]:
        since = utc_datetime("since", since)
        if not is_canonical_id(tenant_id):
            return []
        rows = await self._run(
            _sql.SELECT_USAGE_SINCE,
            {"tenant_id": tenant_id, "since": since},
            ALL,
            retry=True,
        )
        return [usage_from_row(tenant_id, row) for row in rows]

    async def get_tenant_total_cost(self, tenant_id: str, since: datetime) -> Decimal:
        since = utc_datetime("since", since)
        if not is_canonical_id(tenant_id):
            return _ZERO
        row = await self._run(
            *_total_cost_query(tenant_id, since),
            ONE,
            retry=True,
        )
        assert row is not None
        total: Decimal = row[0]
        return total
