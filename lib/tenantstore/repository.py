"""The repository contracts: `TenantRepository`, `UsageRepository` and async twins.

Both are `typing.Protocol`s, so any object with these methods is a repository; the
sync protocols are generated from the async ones (see `_async/protocols.py`).
"""

from __future__ import annotations

from ._async.protocols import AsyncTenantRepository, AsyncUsageRepository
from ._sync.protocols import TenantRepository, UsageRepository

__all__ = [
    "AsyncTenantRepository",
    "AsyncUsageRepository",
    "TenantRepository",
    "UsageRepository",
]

for _protocol in __all__:
    globals()[_protocol].__module__ = "tenantstore"
