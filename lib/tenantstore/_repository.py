"""The repository contracts: tenants, usage, admin users, and async twins.

Both are `typing.Protocol`s, so any object with these methods is a repository; the
sync protocols are generated from the async ones (see `_async/protocols.py`).
"""

from __future__ import annotations

from ._async.protocols import (
    AsyncAdminUserRepository,
    AsyncTenantRepository,
    AsyncUsageRepository,
)
from ._sync.protocols import AdminUserRepository, TenantRepository, UsageRepository

__all__ = [
    "AdminUserRepository",
    "AsyncAdminUserRepository",
    "AsyncTenantRepository",
    "AsyncUsageRepository",
    "TenantRepository",
    "UsageRepository",
]

for _protocol in __all__:
    globals()[_protocol].__module__ = "tenantstore"
