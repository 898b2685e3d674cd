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
└── CipherError         a stored API-key ciphertext cannot be decrypted
```

Messages name the field and the rule, never a key, a hash or a ciphertext.
"""

from __future__ import annotations

__all__ = [
    "AdminUserNotFound",
    "CipherError",
    "Conflict",
    "DatabaseUnreachable",
    "InvalidCredentials",
    "InvalidInput",
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


MODIFIED = (
    "the tenant changed since it was read (its updated_at differs): "
    "read it again and reapply the change"
)


class CipherError(TenantStoreError):
    """An encrypted API key cannot be decrypted: tampered with, moved to another
    tenant's row, or encrypted under a key that is no longer in the ring."""

    __module__ = "tenantstore"
