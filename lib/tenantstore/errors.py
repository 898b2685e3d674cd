"""The exceptions tenantstore raises; nothing else ever reaches a caller.

```
TenantStoreError        base of everything we raise
├── TenantNotFound      also LookupError
├── AdminUserNotFound   also LookupError: no admin user with this id or username
├── InvalidCredentials  authenticate: wrong password, unknown or disabled user alike
├── Conflict            duplicate id, api_key_hash or admin username
│   └── StaleVersion    the tenant changed since it was read (optimistic update)
├── InvalidInput        also ValueError; .field names the field
├── StoreUnavailable    unreachable, pool exhausted, timeout; __cause__ is the driver's
│   └── DatabaseUnreachable   no connection could be made or kept: the server is down
│                             or the path to it is dead (not: busy, slow, exhausted)
├── CipherError         a stored API-key ciphertext cannot be decrypted
├── BudgetExceeded      a reservation would pass the tenant's monthly budget
└── MigrationError      migrations cannot proceed: a file failed, or the files
    │                   and the database disagree; .version and .file say where
    └── DirtyDatabase   schema_migrations is marked dirty: force a version first
```

Messages name the field and the rule, never a key, a hash or a ciphertext.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

__all__ = [
    "AdminUserNotFound",
    "BudgetExceeded",
    "CipherError",
    "Conflict",
    "DatabaseUnreachable",
    "DirtyDatabase",
    "InvalidCredentials",
    "InvalidInput",
    "MigrationError",
    "StaleVersion",
    "StoreUnavailable",
    "TenantNotFound",
    "TenantStoreError",
]


class TenantStoreError(Exception):
    """Base of every error tenantstore raises.

    Raised as itself only for what should not happen (an unmapped driver error,
    a schema that was never migrated): treat it as a bug report.
    """

    __module__ = "tenantstore"


class TenantNotFound(TenantStoreError, LookupError):
    """No such tenant: unknown, malformed or disabled (for key lookups)."""

    __module__ = "tenantstore"


class AdminUserNotFound(TenantStoreError, LookupError):
    """No admin user with this id or username (malformed ones included)."""

    __module__ = "tenantstore"


class InvalidCredentials(TenantStoreError):
    """`authenticate` refused: the password is wrong, the user is unknown, or the
    user is disabled. One error for the three, and the same work (one bcrypt
    verification) for each, so neither the answer nor its time tells which."""

    __module__ = "tenantstore"


class Conflict(TenantStoreError):
    """A write clashes with existing data: a duplicate id or api_key_hash.

    Retrying the same write fails the same way. Its subclass `StaleVersion` is the
    one conflict a read-modify-write should retry (read again, reapply).
    """

    __module__ = "tenantstore"


class StaleVersion(Conflict):
    """An optimistic `update` found another version: the tenant changed (its
    `updated_at` moved) since the caller read it. Read it again, reapply the
    change, and update again; nothing was written."""

    __module__ = "tenantstore"

    def __init__(
        self,
        message: str = (
            "the tenant changed since it was read (its updated_at differs): "
            "read it again and reapply the change"
        ),
    ) -> None:
        super().__init__(message)


class InvalidInput(TenantStoreError, ValueError):
    """A value is rejected at the domain boundary; nothing was written.

    `field` names the offending field (``"budget_usd"``, ``"allowed_models[2]"``).
    """

    __module__ = "tenantstore"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = message

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[str, str]]:
        # args holds the formatted message; rebuild from the two parts instead.
        return (type(self), (self.field, self.rule))


class StoreUnavailable(TenantStoreError):
    """The store cannot answer now: database unreachable, pool exhausted, timeout.

    The driver's exception is ``__cause__``. Retrying later may succeed.
    """

    __module__ = "tenantstore"


class DatabaseUnreachable(StoreUnavailable):
    """The database cannot be reached: connecting failed, or the connection was
    lost or its path went dead past the call's deadline.

    Raised instead of a plain `StoreUnavailable` only when the database is known
    to be out of reach; a busy database (an exhausted pool whose connections are
    all in use, a statement timeout) raises `StoreUnavailable` itself. The caching
    layer's `stale_if_error` serves only on this one.
    """

    __module__ = "tenantstore"


class CipherError(TenantStoreError):
    """An encrypted API key cannot be decrypted: tampered with, moved to another
    tenant's row, or encrypted under a key that is no longer in the ring."""

    __module__ = "tenantstore"


class BudgetExceeded(TenantStoreError):
    """A reservation was refused: this month's spend, plus what open reservations
    hold, plus its estimate would pass the tenant's `budget_usd` (or the spend has
    reached it already). Nothing was reserved.

    `budget_usd`, `spent_usd` and `held_usd` are what the refusing process read
    (held: its own reservations plus the shares other processes have leased),
    `estimate_usd` the estimate refused.
    """

    __module__ = "tenantstore"

    def __init__(
        self,
        tenant_id: str,
        budget_usd: Decimal,
        spent_usd: Decimal,
        held_usd: Decimal,
        estimate_usd: Decimal,
    ) -> None:
        super().__init__(
            f"tenant {tenant_id}: budget {budget_usd} exceeded "
            f"(spent {spent_usd}, held {held_usd}, estimate {estimate_usd})"
        )
        self.tenant_id = tenant_id
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.held_usd = held_usd
        self.estimate_usd = estimate_usd

    def __reduce__(
        self,
    ) -> tuple[type[BudgetExceeded], tuple[str, Decimal, Decimal, Decimal, Decimal]]:
        return (
            type(self),
            (
                self.tenant_id,
                self.budget_usd,
                self.spent_usd,
                self.held_usd,
                self.estimate_usd,
            ),
        )


class MigrationError(TenantStoreError):
    """Migrations cannot proceed: a file failed, or files and database disagree.

    `version` and `file` name the migration concerned when there is one. When a
    file's SQL failed, the driver's exception is ``__cause__``, the file's changes
    were rolled back, and ``schema_migrations`` is left dirty: the message says which
    version to `force` once the cause is fixed.
    """

    __module__ = "tenantstore"

    def __init__(
        self, message: str, *, version: int | None = None, file: str | None = None
    ) -> None:
        super().__init__(message)
        self.version = version
        self.file = file

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword arguments are not in args: rebuild with them.
        return (_migration_error, (type(self), str(self), self.version, self.file))


class DirtyDatabase(MigrationError):
    """``schema_migrations`` is marked dirty: a migration failed or was interrupted.

    Nothing runs until an operator checks the schema, repairs it if needed, and
    records the version it is really at with `force` (or golang-migrate's
    ``migrate force``). `version` is the dirty version (None for golang-migrate's -1).
    """

    __module__ = "tenantstore"

    def __init__(self, version: int | None) -> None:
        shown = "-1 (no version)" if version is None else str(version)
        super().__init__(
            f"schema_migrations is marked dirty at version {shown}: a migration "
            "failed or was interrupted, so the schema may be between two versions. "
            "Check it by hand and repair it if needed, then record the version it is "
            "really at with `tenantstore migrate force VERSION` "
            "(or golang-migrate's `migrate force VERSION`), and migrate again.",
            version=version,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.version,))


def _migration_error(
    cls: type[MigrationError], message: str, version: int | None, file: str | None
) -> MigrationError:
    return cls(message, version=version, file=file)
