"""The one place where psycopg and psycopg_pool exceptions become tenantstore's.

`translate_error` is called wherever a connection or pool is used (the repositories'
one `_run`). It picks the most specific mapping, and the caller raises it `from` the
driver's error, so the cause stays inspectable; anything unmapped becomes a plain
`TenantStoreError`, a bug to report. `tests/test_faults.py` walks every psycopg
exception class to prove the map total.

Also here: which errors mean the connection, not the statement, is at fault
(`discards_connection`: such a connection is closed, never pooled again), which mean
a stale prepared statement or a read-only session (`RETRY_ONCE`: cured and retried
once, whatever the statement), and the rule that tells an unreachable database from
a busy one when the pool times out (`PoolHealth`, `pool_unreachable`).

How unavailability is classified (`DatabaseUnreachable` vs plain `StoreUnavailable`):

- **Unreachable**: connecting failed; the connection was lost (the driver marked it
  broken, the server ended the session: class 08, 57P01-57P05); the call's deadline
  passed without an answer (the watchdog shut the socket down: a frozen path, a
  stopped backend); or the pool timed out while it has been trying to connect
  since its last successful connection, and those attempts failed or have been
  pending since before the wait began.
- **Busy** (plain `StoreUnavailable`): the pool timed out while it was not trying
  to connect (every connection is in use and healthy: an exhausted pool, at its
  max size), or while a fresh attempt was pending that has not failed (an expired
  connection being replaced); a statement timeout (57014), a lock timeout (55P03),
  a read-only database (25006), anything else the server answered.

A pool timeout cannot be classified from psycopg_pool's exception alone (it says the
same for both cases), so `create_pool` records in a `PoolHealth` when attempts
start, succeed and fail (psycopg_pool's `connections_errors` counter, plus
connections that failed their setup). For a pool not made by `create_pool`, its
`connections_errors` counter is the evidence: unreachable when it grew since the
repository's previous pool timeout (or since the repository was built).
"""

from __future__ import annotations

import math
import weakref
from time import monotonic
from typing import Any, Final

import psycopg
import psycopg_pool
from psycopg import errors as pge

from .errors import (
    Conflict,
    DatabaseUnreachable,
    InvalidInput,
    StoreUnavailable,
    TenantNotFound,
    TenantStoreError,
)

_SCHEMA_HINT: Final = (
    "the database schema is missing or outdated; run `python -m tenantstore migrate up`"
)

# Server-side conditions that mean "not now" rather than "never": failover to a
# read-only standby, a transaction that timed out, a connection that went away.
_UNAVAILABLE: Final = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    pge.ReadOnlySqlTransaction,
    pge.IdleInTransactionSessionTimeout,
    pge.TransactionTimeout,
)
# The session is gone: the server ended it (57P01 admin shutdown, 57P02 crash
# shutdown, 57P03 cannot connect now, 57P04 database dropped, 57P05 idle session
# timeout), or the connection failed (class 08; psycopg's classes for it do not
# share a base).
_SESSION_ENDED: Final = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})
# Errors that depend on the connection rather than the statement, besides an ended
# session: a session stuck read-only (a standby after failover; `ALTER DATABASE ...
# SET default_transaction_read_only` reaches new sessions only), a transaction the
# server timed out. Pooled again, such a connection would fail every later call
# that a fresh one would serve.
_CONNECTION_AT_FAULT: Final = (
    pge.ReadOnlySqlTransaction,
    pge.IdleInTransactionSessionTimeout,
    pge.TransactionTimeout,
)
STALE_PLAN: Final = (
    # "cached plan must not change result type": an ALTER TABLE changed a column
    # under a warm prepared statement, and every later execution on that connection
    # fails the same way until its prepared statements are deallocated.
    pge.FeatureNotSupported,
    # psycopg's idea of what is prepared disagrees with the server's.
    pge.InvalidSqlStatementName,
    pge.DuplicatePreparedStatement,
)
"""Stale prepared statements: cured on their connection by `DEALLOCATE ALL`."""
RETRY_ONCE: Final = (
    *STALE_PLAN,
    pge.ReadOnlySqlTransaction,
    # "type of parameter N (bigint) does not match that when preparing the plan
    # (integer)": the same ALTER, seen by a PL/pgSQL trigger function whose plans
    # the session cached. DEALLOCATE does not reach those; a new session does. Our
    # statements pass parameters of the columns' types, so from them this error
    # means a schema change, not a bad value.
    pge.DatatypeMismatch,
)
"""Errors that leave nothing done (the statement failed whole, before or while it
ran, and rolled back) and that another try can cure: a stale plan (on the same
connection, once deallocated), a read-only session or a trigger's stale plan (on a
fresh connection: made after the database became writable again, it is not
read-only; its functions plan afresh). Safe to retry once for every statement,
writes included."""

_SCHEMA: Final = (
    pge.UndefinedTable,
    pge.UndefinedColumn,
    pge.UndefinedFunction,
    pge.UndefinedObject,
    pge.InvalidSchemaName,
)


def _session_ended(exc: psycopg.Error) -> bool:
    # A bare OperationalError comes from libpq itself, without an SQLSTATE: the
    # connection failed, not the statement.
    if type(exc) is psycopg.OperationalError:
        return True
    state = exc.sqlstate or ""
    return state.startswith("08") or state in _SESSION_ENDED


def discards_connection(exc: psycopg.Error) -> bool:
    """Whether the connection `exc` came from must be closed, not pooled again."""
    return isinstance(exc, _CONNECTION_AT_FAULT) or _session_ended(exc)


def translate_error(
    exc: psycopg.Error,
    *,
    lost: bool = False,
    deadline: float | None = None,
    pool: Any = None,
    waited: float | None = None,
) -> TenantStoreError:
    """Our exception for a driver exception (the caller raises it `from` exc).

    `lost`: the connection broke under the call. `deadline`: the call's deadline
    passed and its connection was shut down (seconds it waited). `pool`: the pool a
    `PoolTimeout` came from, to tell an unreachable database from a busy one, and
    `waited` how long the wait was.
    """
    if deadline is not None:
        return DatabaseUnreachable(
            f"the database is unreachable (no answer within {deadline:g} s; "
            "the connection was shut down)"
        )
    if isinstance(exc, pge.UniqueViolation | pge.ExclusionViolation):
        return Conflict("a tenant with this id or api_key_hash already exists")
    if isinstance(exc, pge.ForeignKeyViolation):
        return TenantNotFound("no tenant with this id")
    if isinstance(exc, psycopg.IntegrityError | psycopg.DataError):
        diag = exc.diag
        field = diag.column_name or diag.constraint_name or "value"
        return InvalidInput(field, "rejected by the database")
    if isinstance(exc, _UNAVAILABLE):
        # The driver's first line says why (refused, timed out, terminated); it
        # carries no parameter values, unlike data errors' messages.
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        unreachable = (
            lost
            or _session_ended(exc)
            or (
                isinstance(exc, psycopg_pool.PoolTimeout)
                and pool is not None
                and pool_unreachable(pool, waited)
            )
        )
        if unreachable:
            return DatabaseUnreachable(f"the database is unreachable ({reason})")
        return StoreUnavailable(f"the database is unavailable ({reason})")
    if isinstance(exc, _SCHEMA):
        return TenantStoreError(_SCHEMA_HINT)
    return TenantStoreError(f"unexpected database error ({type(exc).__name__})")


class PoolHealth:
    """What a pool's connection attempts did lately (kept by `create_pool`'s hooks).

    Written by the pool's workers (an attempt starts, a connection is set up, a
    setup fails), read when a pool wait times out. Times are `time.monotonic()`.
    """

    __slots__ = ("__weakref__", "_errors_then", "_pending_since", "_pool", "_setups")

    def __init__(self) -> None:
        self._pool: weakref.ref[Any] | None = None
        self._pending_since = math.inf  # the first attempt since the last success
        self._errors_then = 0  # failed attempts counted at the last success
        self._setups = 0  # connections that failed their setup (not in the stats)

    def bind(self, pool: Any) -> None:
        self._pool = weakref.ref(pool)
        _HEALTH[pool] = self

    def _errors(self) -> int:
        pool = self._pool() if self._pool is not None else None
        return self._setups + (0 if pool is None else _connection_errors(pool))

    def attempting(self) -> None:
        if self._pending_since == math.inf:
            self._pending_since = monotonic()

    def connected(self) -> None:
        self._pending_since = math.inf
        self._errors_then = self._errors()

    def setup_failed(self) -> None:
        self._setups += 1

    def unreachable(self, wait_began: float) -> bool:
        if self._pending_since == math.inf:
            return False  # not trying to connect: every connection is in use
        errors = self._errors()
        if errors < self._errors_then:  # reset by `pop_stats()`: any error counts
            failed = errors > 0
        else:
            failed = errors > self._errors_then
        return failed or self._pending_since < wait_began


# Pool -> its health record, or for a foreign pool the connection-error count at
# the last look. Weak: a record dies with its pool.
_HEALTH: weakref.WeakKeyDictionary[Any, PoolHealth] = weakref.WeakKeyDictionary()
_FOREIGN_ERRORS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def track_pool(pool: Any) -> None:
    """Start telling unreachable from busy for a pool `create_pool` did not make
    (a repository calls it for whatever pool it is given)."""
    if pool not in _HEALTH and pool not in _FOREIGN_ERRORS:
        _FOREIGN_ERRORS[pool] = _connection_errors(pool)


def _connection_errors(pool: Any) -> int:
    try:
        count: int = pool.get_stats().get("connections_errors", 0)
    except Exception:  # not a psycopg_pool pool: no evidence either way
        return 0
    return count


def pool_unreachable(pool: Any, waited: float | None = None) -> bool:
    """After a pool wait timed out: is the database out of reach (not just busy)?

    `waited`: how long the wait was (the pool's own `timeout` when None).
    """
    health = _HEALTH.get(pool)
    if health is None:
        errors = _connection_errors(pool)
        before = _FOREIGN_ERRORS.get(pool, 0)
        _FOREIGN_ERRORS[pool] = errors
        # A counter reset by `pop_stats()` reads lower: any error since counts.
        return errors > before or (errors < before and errors > 0)
    if waited is None:
        waited = float(getattr(pool, "timeout", 0.0))
    # Trying to connect since the last success, and the attempts failed or have
    # hung since before the wait began: connecting does not work. Not trying (at
    # max size, every connection in use) or a fresh attempt that has not failed
    # (an expired connection being replaced): merely busy.
    return health.unreachable(monotonic() - waited)
