"""The PostgreSQL backend on psycopg 3 and its pool.

Statements come from `_sql` (composed once) and run prepared. Single-statement reads
and writes run as they are: on an autocommit pool connection (see `pool`) they cost
one round trip, not a BEGIN/COMMIT pair around it. Every driver error goes through
`_pgerrors.translate_error`. Inputs are validated before any connection is taken, and a
lookup that cannot match (a malformed id or hash) answers without a query.
"""

from __future__ import annotations

import builtins
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg import errors as pge
from psycopg_pool import AsyncConnectionPool

from .. import _sql
from .._acompat import AWatchdog
from .._audit import (
    AuditEvent,
    actor_name,
    audit_params,
    audit_query,
    current_actor,
    event_from_row,
)
from .._cipher import KeyCipher, encrypted_key_for_write, rotation_for_write
from .._clock import SYSTEM_CLOCK, Clock
from .._keys import key_matches_hash, lookup_hash
from .._models import RecordOutcome, Tenant, UsageRecord, UsageSummary
from .._pgerrors import (
    RETRY_ONCE,
    STALE_PLAN,
    discards_connection,
    track_pool,
    translate_error,
)
from .._rows import (
    batch_outcomes,
    summary_from_row,
    tenant_from_row,
    tenant_params,
    usage_batch_rows,
    usage_copy_rows,
    usage_from_row,
    usage_params,
    utc,
)
from .._validation import (
    boolean,
    expected_version,
    grace_until,
    is_canonical_id,
    is_key_hash,
    key_prefix,
    tenant_for_write,
    usage_batch_for_write,
    usage_for_write,
    utc_datetime,
    utc_day,
)
from ..errors import CipherError, InvalidInput, StaleVersion, TenantNotFound

__all__ = ["AsyncPostgresTenantRepository", "AsyncPostgresUsageRepository"]

_ZERO: Final = Decimal("0")
_ONE_DAY: Final = timedelta(days=1)
# Rows per prune_usage transaction: short enough to hold few locks for little
# time, long enough that the per-batch round trip does not matter.
PRUNE_BATCH: Final = 5000
# After a batch that could not be copied straight in, this many go the careful way.
_CAREFUL_BATCHES: Final = 16
_INSERTED: Final = RecordOutcome.INSERTED


# The client-side deadline trails the server's statement_timeout by this much: time
# for the server's cancellation to come back, so that a slow statement fails as
# busy (and keeps its connection) rather than being cut as a dead path.
_GRACE: Final = 1.0
# psycopg watches for this command and forgets its own prepared statements too.
_DEALLOCATE_ALL: Final = "DEALLOCATE ALL"
_WATCHDOG: Final = AWatchdog()


class _Skipped(Exception):
    """A COPY wrote fewer rows than it was given (see `_copy_if_clean`)."""


def _not_found() -> TenantNotFound:
    return TenantNotFound("no such tenant")


def _modified() -> StaleVersion:
    return StaleVersion()


_log = logging.getLogger("tenantstore.postgres")

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

    __slots__ = ("_clock", "_deadline", "_pool", "_prepare", "_timeout")

    def __init__(
        self,
        pool: AsyncConnectionPool,
        clock: Clock | None,
        prepare: bool,
        timeout: float | None,
    ) -> None:
        if timeout is None:
            timeout = float(pool.timeout)
        if isinstance(timeout, bool) or not (
            isinstance(timeout, int | float) and 0 < timeout < math.inf
        ):
            raise InvalidInput("timeout", "must be a positive number of seconds")
        self._pool = pool
        self._clock = clock or SYSTEM_CLOCK
        self._prepare = prepare
        self._timeout = float(timeout)
        self._deadline = self._timeout + _GRACE
        track_pool(pool)

    @property
    def timeout(self) -> float:
        """The call bound, in seconds: the wait for a connection, and the statement's
        (the server's statement_timeout; no answer `timeout` + 1 s: a dead path)."""
        return self._timeout

    async def _run(
        self,
        statement: str,
        params: Mapping[str, Any] | None,
        fetch: int,
        *,
        retry: bool,
        work: Callable[[AsyncConnection[Any]], Any] | None = None,
    ) -> Any:
        """Run one statement on a pool connection; driver errors become ours.

        With `work`, run that instead of `statement` (what takes several
        statements in a transaction of its own, such as `record_many`'s COPY),
        under the same bound and the same rules for faulty connections.

        Bounded: at most `timeout` waiting for a connection, and `timeout` + a
        grace for the answer, past which the connection is shut down and
        `DatabaseUnreachable` raised (the server's statement_timeout, set by
        `create_async_pool`, ends a slow statement first: `StoreUnavailable`).

        With `retry`, a statement whose connection turns out broken (the server
        restarted, a proxy dropped it: the pool cannot know until it is used) runs
        once more on a fresh connection. Only idempotent statements retry: reads,
        and the usage insert, which ON CONFLICT makes idempotent. A dead path (the
        deadline passed) is not retried: the retry would wait as long again. What
        the server refused before doing anything (`RETRY_ONCE`: a stale prepared
        statement, a read-only session) is cured and tried once more, whatever
        the statement.
        """
        pool = self._pool
        conn = None  # set: a connection kept for the retry (its plans deallocated)
        again = True  # one more try after RETRY_ONCE
        while True:
            if conn is None:
                try:
                    # getconn/putconn rather than `pool.connection()`: on an
                    # autocommit connection the latter's no-op commit costs about
                    # a third of the client's time on a lookup.
                    conn = await pool.getconn(self._timeout)
                except psycopg.Error as exc:
                    raise translate_error(exc, pool=pool, waited=self._timeout) from exc
            alarm = _WATCHDOG.arm(conn, self._deadline)
            try:
                if work is not None:
                    result = await work(conn)
                elif conn.autocommit:
                    result = await self._execute(conn, statement, params, fetch)
                else:
                    # Not one of ours (see `create_async_pool`): its own transaction.
                    async with conn.transaction():
                        result = await self._execute(conn, statement, params, fetch)
            except psycopg.Error as exc:
                fired = _WATCHDOG.disarm(alarm)
                lost = fired or conn.broken
                if again and not lost and isinstance(exc, RETRY_ONCE):
                    # Refused before anything was done: safe to try again.
                    again = False
                    _log.info("postgres: %s, retrying once", type(exc).__name__)
                    if isinstance(exc, STALE_PLAN) and await self._deallocate(conn):
                        continue  # on the same connection, now without stale plans
                    await conn.close()
                    await pool.putconn(conn)
                    conn = None
                    continue
                if lost or discards_connection(exc):
                    # Closed first, so that the pool replaces it rather than
                    # handing the same fault to the next caller.
                    await conn.close()
                await pool.putconn(conn)
                conn = None
                if lost and not fired and retry:
                    retry = False
                    _log.warning(
                        "postgres: connection lost (%s), retrying once on another",
                        type(exc).__name__,
                    )
                    continue
                raise translate_error(
                    exc, lost=lost, deadline=self._deadline if fired else None
                ) from exc
            except BaseException:
                # Cancelled or interrupted mid-call: the pool discards a
                # connection that is not idle.
                _WATCHDOG.disarm(alarm)
                await pool.putconn(conn)
                raise
            if _WATCHDOG.disarm(alarm):
                await conn.close()  # the deadline passed as the answer came
            await pool.putconn(conn)
            return result

    async def _deallocate(self, conn: AsyncConnection[Any]) -> bool:
        """Drop `conn`'s prepared statements (psycopg forgets its own); True if done."""
        alarm = _WATCHDOG.arm(conn, self._deadline)
        try:
            if conn.autocommit:
                await conn.execute(_DEALLOCATE_ALL)
            else:
                async with conn.transaction():
                    await conn.execute(_DEALLOCATE_ALL)
        except psycopg.Error:
            _WATCHDOG.disarm(alarm)
            return False
        except BaseException:
            _WATCHDOG.disarm(alarm)
            await self._pool.putconn(conn)  # as `_run` does when interrupted
            raise
        return not _WATCHDOG.disarm(alarm)

    async def _run_copy(
        self,
        setup: str,
        copy: str,
        rows: Sequence[Sequence[Any]],
        statement: str,
    ) -> Any:
        """`setup`, COPY `rows` in, then `statement`, in one transaction; its first
        column of its first row. Through `_run`: bounded, and retried once on a
        broken connection (only callers whose transaction is idempotent use it).
        """

        async def work(conn: AsyncConnection[Any]) -> Any:
            async with conn.transaction():
                await conn.execute(setup)
                async with conn.cursor().copy(copy) as pipe:
                    for row in rows:
                        await pipe.write_row(row)
                cur = await conn.execute(statement, prepare=self._prepare)
                first = await cur.fetchone()
                assert first is not None
                return first[0]

        return await self._run(copy, None, ONE, retry=True, work=work)

    async def _copy_if_clean(
        self, copy: str, rows: Sequence[Sequence[Any]], types: Sequence[str]
    ) -> bool:
        """COPY `rows` in, in one transaction; False, with nothing written, when a
        unique or foreign key fails (a row that is there already, a tenant that is
        not, or 005's trigger skipped a row that is stored already). Through
        `_run`, as `_run_copy`: a COPY that failed wrote nothing.
        """

        async def work(conn: AsyncConnection[Any]) -> bool:
            try:
                async with conn.transaction():
                    cur = conn.cursor()
                    async with cur.copy(copy) as pipe:
                        pipe.set_types(types)
                        for row in rows:
                            await pipe.write_row(row)
                    if cur.rowcount != len(rows):
                        # Fewer rows than sent: 005's trigger skipped a record
                        # that is stored already (no error). Rolled back.
                        raise _Skipped
            except (pge.UniqueViolation, pge.ForeignKeyViolation, _Skipped):
                return False
            return True

        clean: bool = await self._run(copy, None, ONE, retry=True, work=work)
        return clean

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
    passed to writes. `actor` is recorded in the audit log as who made each write
    (unless `acting_as` names someone else for it); without either, the log has
    the database role and application_name only. `timeout` (seconds; the pool's own
    `timeout` by default, 5 s from `create_async_pool`) bounds every call: the wait
    for a connection, then the statement (see `_run`); past it, `StoreUnavailable`,
    or `DatabaseUnreachable` when the database is out of reach.
    """

    __module__ = "tenantstore"
    __slots__ = ("_actor", "_cipher")

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        clock: Clock | None = None,
        cipher: KeyCipher | None = None,
        prepare: bool = True,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(pool, clock, prepare, timeout)
        self._cipher = cipher
        self._actor = None if actor is None else actor_name(actor)

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
        now = utc(self._clock.now())
        params = tenant_params(
            tenant,
            now=now,
            api_key_encrypted=encrypted,
            api_key_prefix=None if api_key is None else key_prefix(api_key),
        )
        params.update(audit_params(current_actor(self._actor), now))
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
        now = utc(self._clock.now())
        params = tenant_params(
            tenant,
            now=now,
            api_key_encrypted=encrypted,
            expected=expected,
            api_key_prefix=None if api_key is None else key_prefix(api_key),
        )
        params.update(audit_params(current_actor(self._actor), now))
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
        now = utc(self._clock.now())
        row = await self._run(
            _sql.SET_ENABLED,
            {
                "id": tenant_id,
                "enabled": enabled,
                "now": now,
                **audit_params(current_actor(self._actor), now),
            },
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
        api_key_hash, prefix, encrypted, grace, expires_at = rotation_for_write(
            tenant_id, api_key, grace, expires_at, self._cipher
        )
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
                **audit_params(current_actor(self._actor), now),
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
        now = utc(self._clock.now())
        row = await self._run(
            _sql.REVOKE_PREVIOUS_API_KEY,
            {
                "id": tenant_id,
                "now": now,
                **audit_params(current_actor(self._actor), now),
            },
            ONE,
            retry=False,
        )
        if row is None:  # unknown, or no previous key: nothing to end
            return await self.get_by_id(tenant_id)
        return tenant_from_row(row)

    async def delete(self, tenant_id: str) -> None:
        if not is_canonical_id(tenant_id):
            raise _not_found()
        now = utc(self._clock.now())
        deleted = await self._run(
            _sql.DELETE_TENANT,
            {"id": tenant_id, **audit_params(current_actor(self._actor), now)},
            COUNT,
            retry=False,
        )
        if deleted == 0:
            raise _not_found()

    async def list_audit(
        self,
        since: datetime | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> builtins.list[AuditEvent]:
        return await list_audit(self, since, entity_id, limit, before)

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


async def list_audit(
    repository: _AsyncPostgres,
    since: datetime | None,
    entity_id: str | None,
    limit: int,
    before: int | None,
) -> builtins.list[AuditEvent]:
    """The audit log, newest first (see `AsyncTenantRepository.list_audit`)."""
    start, before = audit_query(since, entity_id, limit, before)
    if entity_id is not None and not is_canonical_id(entity_id):
        return []
    params = {"since": start, "entity_id": entity_id, "before": before, "limit": limit}
    key = (start is not None, entity_id is not None, before is not None)
    rows = await repository._run(_sql.SELECT_AUDIT[key], params, ALL, retry=True)
    return [event_from_row(row) for row in rows]


class AsyncPostgresUsageRepository(_AsyncPostgres):
    """Usage records in PostgreSQL; `record` is idempotent on (tenant, request).

    `pool`, `clock`, `prepare` and `timeout` as for `AsyncPostgresTenantRepository`.
    """

    __module__ = "tenantstore"
    __slots__ = ("_careful_batches",)

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        clock: Clock | None = None,
        prepare: bool = True,
        timeout: float | None = None,
    ) -> None:
        super().__init__(pool, clock, prepare, timeout)
        self._careful_batches = 0

    async def record(self, record: UsageRecord) -> bool:
        record = usage_for_write(record, utc(self._clock.now()))
        inserted: int = await self._run(
            _sql.INSERT_USAGE,
            usage_params(record),
            COUNT,
            retry=True,
        )
        return inserted == 1

    async def record_many(
        self, records: builtins.list[UsageRecord]
    ) -> builtins.list[RecordOutcome]:
        records = usage_batch_for_write(records, utc(self._clock.now()))
        return await self._record_many_validated(records)

    async def _record_many_validated(
        self, records: builtins.list[UsageRecord]
    ) -> builtins.list[RecordOutcome]:
        """`record_many` for records `usage_for_write` returned (the writer's)."""
        if not records:
            return []
        # Most batches are all new records of existing tenants: COPY them straight
        # into usage_records (raw COPY's speed). A batch that trips the unique
        # index or the foreign key is rolled back whole and written the careful
        # way, per record; and so are the next few, since batches that hold
        # retries or unknown tenants tend to come in runs.
        rows = None
        if self._careful_batches:
            self._careful_batches -= 1
        else:
            if len({record.request_id for record in records}) == len(records):
                # If the COPY writes every row, every record is INSERTED: nothing
                # to number or look up, the cheap path of a clean batch.
                direct = usage_copy_rows(records)
            else:  # a request id repeats: each (tenant_id, request_id) sent once
                rows, where, repeated = usage_batch_rows(records)
                direct = [row[1:] for row in rows]
            if await self._copy_if_clean(
                _sql.COPY_USAGE_DIRECT, direct, _sql.COPY_USAGE_DIRECT_TYPES
            ):
                if rows is None:
                    return [_INSERTED] * len(records)
                return batch_outcomes([0] * len(rows), where, repeated)
            self._careful_batches = _CAREFUL_BATCHES
        if rows is None:
            rows, where, repeated = usage_batch_rows(records)
        codes = await self._run_copy(
            _sql.USAGE_BATCH_SETUP,
            _sql.COPY_USAGE_BATCH,
            rows,
            _sql.INSERT_USAGE_BATCH,
        )
        return batch_outcomes(codes, where, repeated)

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

    async def get_tenant_usage_summary(
        self, tenant_id: str, since: date, until: date | None = None
    ) -> builtins.list[UsageSummary]:
        since = utc_day("since", since)
        if until is not None:
            until = utc_day("until", until)
        if not is_canonical_id(tenant_id):
            return []
        if until is None:
            statement = _sql.SELECT_USAGE_SUMMARY
            params: dict[str, Any] = {"tenant_id": tenant_id, "since": since}
        else:
            statement = _sql.SELECT_USAGE_SUMMARY_UNTIL
            params = {"tenant_id": tenant_id, "since": since, "until": until}
        rows = await self._run(statement, params, ALL, retry=True)
        return [summary_from_row(row) for row in rows]

    async def prune_usage(self, before: datetime) -> int:
        before = utc_datetime("before", before)
        params = {"before": before, "batch": PRUNE_BATCH}
        pruned = 0
        while True:
            # Each batch commits on its own: not retried on a broken connection,
            # where it may have committed unseen.
            row = await self._run(_sql.PRUNE_USAGE_BATCH, params, ONE, retry=False)
            assert row is not None
            deleted: int = row[0]
            pruned += deleted
            if deleted < PRUNE_BATCH:
                return pruned
