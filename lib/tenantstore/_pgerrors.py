"""The one place where psycopg and psycopg_pool exceptions become tenantstore's.

`translate_error` is called wherever a connection or pool is used (the repositories'
one `_run`). It picks the most specific mapping, and the caller raises it `from` the
driver's error, so the cause stays inspectable; anything unmapped becomes a plain
`TenantStoreError`, a bug to report. `tests/test_faults.py` walks every psycopg
exception class to prove the map total.
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg import errors as pge

from .errors import (
    Conflict,
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
_SCHEMA: Final = (
    pge.UndefinedTable,
    pge.UndefinedColumn,
    pge.UndefinedFunction,
    pge.UndefinedObject,
    pge.InvalidSchemaName,
)


def translate_error(exc: psycopg.Error) -> TenantStoreError:
    """Our exception for a driver exception (the caller raises it `from` exc)."""
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
        reason = f": {lines[0]}" if lines else ""
        return StoreUnavailable(
            f"the database is unavailable ({type(exc).__name__}{reason})"
        )
    if isinstance(exc, _SCHEMA):
        return TenantStoreError(_SCHEMA_HINT)
    return TenantStoreError(f"unexpected database error ({type(exc).__name__})")
