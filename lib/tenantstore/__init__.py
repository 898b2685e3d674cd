"""tenantstore: tenants and usage records for LLM gateways.

PostgreSQL and in-memory backends with one contract, a caching API-key lookup,
sync and async. See the README for a tour.
"""

import logging as _logging

from ._async.cache import AsyncCachedTenantRepository
from ._async.listener import AsyncTenantCacheListener
from ._async.postgres import AsyncPostgresTenantRepository, AsyncPostgresUsageRepository
from ._async.writer import AsyncUsageWriter
from ._cachestate import CacheStats
from ._sync.cache import CachedTenantRepository
from ._sync.listener import TenantCacheListener
from ._sync.postgres import PostgresTenantRepository, PostgresUsageRepository
from ._sync.writer import UsageWriter
from ._writerstate import UsageWriterStats
from .cipher import KeyCipher
from .clock import Clock, SystemClock
from .errors import (
    CipherError,
    Conflict,
    DatabaseUnreachable,
    InvalidInput,
    StaleVersion,
    StoreUnavailable,
    TenantNotFound,
    TenantStoreError,
)
from .keys import generate_api_key, hash_api_key, is_plausible_api_key
from .memory import (
    AsyncInMemoryTenantRepository,
    AsyncInMemoryUsageRepository,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
)
from .models import RecordOutcome, Tenant, UsageRecord, UsageSummary
from .pool import create_async_pool, create_pool
from .repository import (
    AsyncTenantRepository,
    AsyncUsageRepository,
    TenantRepository,
    UsageRepository,
)

__all__ = [
    "AsyncCachedTenantRepository",
    "AsyncInMemoryTenantRepository",
    "AsyncInMemoryUsageRepository",
    "AsyncPostgresTenantRepository",
    "AsyncPostgresUsageRepository",
    "AsyncTenantCacheListener",
    "AsyncTenantRepository",
    "AsyncUsageRepository",
    "AsyncUsageWriter",
    "CacheStats",
    "CachedTenantRepository",
    "CipherError",
    "Clock",
    "Conflict",
    "DatabaseUnreachable",
    "InMemoryTenantRepository",
    "InMemoryUsageRepository",
    "InvalidInput",
    "KeyCipher",
    "PostgresTenantRepository",
    "PostgresUsageRepository",
    "RecordOutcome",
    "StaleVersion",
    "StoreUnavailable",
    "SystemClock",
    "Tenant",
    "TenantCacheListener",
    "TenantNotFound",
    "TenantRepository",
    "TenantStoreError",
    "UsageRecord",
    "UsageRepository",
    "UsageSummary",
    "UsageWriter",
    "UsageWriterStats",
    "__version__",
    "create_async_pool",
    "create_pool",
    "generate_api_key",
    "hash_api_key",
    "is_plausible_api_key",
]

__version__ = "0.1.0"

# A library logs; the application decides where it goes.
_logging.getLogger("tenantstore").addHandler(_logging.NullHandler())
