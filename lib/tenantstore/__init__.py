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
from ._async.writer import AsyncUsageWriter
from ._budgetstate import BudgetAlert, BudgetStats, BudgetStatus
from ._cachestats import CacheStats
from ._sync.admin import PostgresAdminUserRepository
from ._sync.budget import BudgetGuard, Reservation
from ._sync.cache import CachedTenantRepository
from ._sync.listener import TenantCacheListener
from ._sync.postgres import PostgresTenantRepository, PostgresUsageRepository
from ._sync.writer import UsageWriter
from ._writerstate import UsageWriterStats
from .audit import AuditChange, AuditEvent, acting_as
from .cipher import KeyCipher
from .clock import Clock, SystemClock
from .errors import (
    AdminUserNotFound,
    BudgetExceeded,
    CipherError,
    Conflict,
    DatabaseUnreachable,
    InvalidCredentials,
    InvalidInput,
    StaleVersion,
    StoreUnavailable,
    TenantNotFound,
    TenantStoreError,
)
from .keys import generate_api_key, hash_api_key, is_plausible_api_key
from .memory import (
    AsyncInMemoryAdminUserRepository,
    AsyncInMemoryTenantRepository,
    AsyncInMemoryUsageRepository,
    InMemoryAdminUserRepository,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
)
from .models import AdminUser, RecordOutcome, Tenant, UsageRecord, UsageSummary
from .passwords import hash_password, verify_password
from .pool import create_async_pool, create_pool
from .repository import (
    AdminUserRepository,
    AsyncAdminUserRepository,
    AsyncTenantRepository,
    AsyncUsageRepository,
    TenantRepository,
    UsageRepository,
)
from .roles import has_permission

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
    "InMemoryAdminUserRepository",
    "InMemoryTenantRepository",
    "InMemoryUsageRepository",
    "InvalidCredentials",
    "InvalidInput",
    "KeyCipher",
    "PostgresAdminUserRepository",
    "PostgresTenantRepository",
    "PostgresUsageRepository",
    "RecordOutcome",
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
