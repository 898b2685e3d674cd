"""tenantstore: tenants and usage records for LLM gateways.

PostgreSQL and in-memory backends with one contract, a caching API-key lookup,
sync and async. See the README for a tour.
"""

import logging as _logging

from ._async.budget import AsyncBudgetGuard, AsyncReservation
from ._async.cache import AsyncCachedTenantRepository
from ._async.listener import AsyncTenantCacheListener
from ._async.postgres import AsyncPostgresTenantRepository, AsyncPostgresUsageRepository
from ._budgetstate import BudgetAlert, BudgetStats, BudgetStatus
from ._cachestate import CacheStats
from ._sync.budget import BudgetGuard, Reservation
from ._sync.cache import CachedTenantRepository
from ._sync.listener import TenantCacheListener
from ._sync.postgres import PostgresTenantRepository, PostgresUsageRepository
from .cipher import KeyCipher
from .clock import Clock, SystemClock
from .errors import (
    BudgetExceeded,
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
from .models import Tenant, UsageRecord
from .pool import create_async_pool, create_pool
from .repository import (
    AsyncTenantRepository,
    AsyncUsageRepository,
    TenantRepository,
    UsageRepository,
)

__all__ = [
    "AsyncBudgetGuard",
    "AsyncCachedTenantRepository",
    "AsyncInMemoryTenantRepository",
    "AsyncInMemoryUsageRepository",
    "AsyncPostgresTenantRepository",
    "AsyncPostgresUsageRepository",
    "AsyncReservation",
    "AsyncTenantCacheListener",
    "AsyncTenantRepository",
    "AsyncUsageRepository",
    "BudgetAlert",
    "BudgetExceeded",
    "BudgetGuard",
    "BudgetStats",
    "BudgetStatus",
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
    "Reservation",
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
