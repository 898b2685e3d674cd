"""tenantstore: tenants, usage records and admin users for LLM gateways.

PostgreSQL and in-memory backends with one contract, a caching API-key lookup, an
audit log of every change, sync and async. See the README for a tour.
"""

import logging as _logging

from ._async.admin import AsyncPostgresAdminUserRepository
from ._async.budget import AsyncBudgetGuard, AsyncReservation
from ._async.cache import AsyncCachedTenantRepository
from ._async.listener import AsyncTenantCacheListener
from ._async.postgres import AsyncPostgresTenantRepository, AsyncPostgresUsageRepository
from ._async.store import AsyncStore
from ._async.writer import AsyncUsageWriter
from ._audit import AuditChange, AuditEvent, acting_as
from ._budgetstate import BudgetAlert, BudgetStats, BudgetStatus
from ._cachestats import CacheStats
from ._cipher import KeyCipher
from ._clock import Clock, SystemClock
from ._keys import generate_api_key, hash_api_key, is_plausible_api_key
from ._listenerstate import ListenerStats
from ._memory import (
    AsyncInMemoryAdminUserRepository,
    AsyncInMemoryTenantRepository,
    AsyncInMemoryUsageRepository,
    InMemoryAdminUserRepository,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
)
from ._models import AdminUser, RecordOutcome, Tenant, UsageRecord, UsageSummary
from ._passwords import hash_password, verify_password
from ._repository import (
    AdminUserRepository,
    AsyncAdminUserRepository,
    AsyncTenantRepository,
    AsyncUsageRepository,
    TenantRepository,
    UsageRepository,
)
from ._roles import has_permission
from ._storestate import PartHealth, StoreHealth
from ._sync.admin import PostgresAdminUserRepository
from ._sync.budget import BudgetGuard, Reservation
from ._sync.cache import CachedTenantRepository
from ._sync.listener import TenantCacheListener
from ._sync.postgres import PostgresTenantRepository, PostgresUsageRepository
from ._sync.store import Store
from ._sync.writer import UsageWriter
from ._writerstate import UsageWriterStats
from .errors import (
    AdminUserNotFound,
    BudgetExceeded,
    CipherError,
    Conflict,
    DatabaseUnreachable,
    DirtyDatabase,
    InvalidCredentials,
    InvalidInput,
    MigrationError,
    StaleVersion,
    StoreUnavailable,
    TenantNotFound,
    TenantStoreError,
)
from .pool import create_async_pool, create_pool

__all__ = [
    "AdminUser",
    "AdminUserNotFound",
    "AdminUserRepository",
    "AsyncAdminUserRepository",
    "AsyncBudgetGuard",
    "AsyncCachedTenantRepository",
    "AsyncInMemoryAdminUserRepository",
    "AsyncInMemoryTenantRepository",
    "AsyncInMemoryUsageRepository",
    "AsyncPostgresAdminUserRepository",
    "AsyncPostgresTenantRepository",
    "AsyncPostgresUsageRepository",
    "AsyncReservation",
    "AsyncStore",
    "AsyncTenantCacheListener",
    "AsyncTenantRepository",
    "AsyncUsageRepository",
    "AsyncUsageWriter",
    "AuditChange",
    "AuditEvent",
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
    "DirtyDatabase",
    "InMemoryAdminUserRepository",
    "InMemoryTenantRepository",
    "InMemoryUsageRepository",
    "InvalidCredentials",
    "InvalidInput",
    "KeyCipher",
    "ListenerStats",
    "MigrationError",
    "PartHealth",
    "PostgresAdminUserRepository",
    "PostgresTenantRepository",
    "PostgresUsageRepository",
    "RecordOutcome",
    "Reservation",
    "StaleVersion",
    "Store",
    "StoreHealth",
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
    "acting_as",
    "create_async_pool",
    "create_pool",
    "generate_api_key",
    "has_permission",
    "hash_api_key",
    "hash_password",
    "is_plausible_api_key",
    "verify_password",
]

__version__ = "0.1.0"

# A library logs; the application decides where it goes.
_logging.getLogger("tenantstore").addHandler(_logging.NullHandler())
