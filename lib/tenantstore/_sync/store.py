# Generated from _async/ by tools/gen_sync.py: do not edit by hand.
"""The one object a gateway imports: the pool, the repositories, the cache and its
listener, the usage writer and the budget guard, opened and closed together.

`AsyncStore.open(url)` builds the PostgreSQL parts, proves the database answers and
the listener listens before it returns, and closes whatever it opened when it
fails; `AsyncStore.memory()` builds the in-memory parts. `close()` takes them down
in the order that loses nothing: no more usage is taken, what was submitted is
written, leased budget shares go back, the listener stops, the pool closes. The
health report and its rules are `_storestate`'s (shared with the sync twin).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

from .._acompat import Opening, opening
from .._cipher import KeyCipher
from .._clock import Clock
from .._memory import (
    InMemoryAdminUserRepository,
    InMemoryTenantRepository,
    InMemoryUsageRepository,
)
from .._redact import redact_conninfo
from .._storestate import (
    HEALTH_TIMEOUT,
    Part,
    PartHealth,
    StoreHealth,
    database_health,
    listener_health,
    part_options,
    pool_health,
    writer_health,
)
from ..errors import (
    DatabaseUnreachable,
    InvalidInput,
    StoreUnavailable,
    TenantStoreError,
)
from ..pool import MAX_SIZE, MIN_SIZE, TIMEOUT, create_pool
from .admin import PostgresAdminUserRepository
from .budget import BudgetGuard
from .cache import CachedTenantRepository
from .listener import TenantCacheListener
from .postgres import (
    ONE,
    PostgresTenantRepository,
    PostgresUsageRepository,
    _AsyncPostgres,
)
from .protocols import (
    AdminUserRepository,
    TenantRepository,
    UsageRepository,
)
from .writer import UsageWriter

__all__ = ["Store"]

_log = logging.getLogger("tenantstore")

CLOSE_TIMEOUT: Final = 10.0
"""How long `close()` waits, by default, for the writer to write what is pending."""

_PING: Final = "SELECT 1"


class Store:
    """Everything a gateway needs from tenantstore, opened and closed together.

    Open it with `open(url)` (PostgreSQL) or `memory()`, and close it when the
    application stops: `close()`, or use it as a context manager (asynchronous
    for `AsyncStore`), either the store itself or what `open(...)` returns.

    Its parts, by the same names on every variant:

    - `tenants`: the tenant repository, behind the key cache
      (`CachedTenantRepository`) unless opened with `cache=False`;
    - `usage`: the usage repository;
    - `writer`: the `UsageWriter` over `usage` (None with `writer=False`);
    - `budgets`: the `BudgetGuard` (None with `budgets=False`);
    - `admins`: the admin-user repository;
    - `listener`: the cache's `TenantCacheListener` (None in memory, or
      without a cache);
    - `pool`: the psycopg_pool pool every PostgreSQL part shares (None in memory).

    (`AsyncStore`'s parts are the `Async` twins.) `health()` says whether each
    part is healthy. The constructor takes parts already made, for an
    application that builds its own: the store owns them, `close()` closes them.
    """

    __module__ = "tenantstore"

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        usage: UsageRepository,
        admins: AdminUserRepository,
        writer: UsageWriter | None = None,
        budgets: BudgetGuard | None = None,
        listener: TenantCacheListener | None = None,
        pool: ConnectionPool | None = None,
        health_timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        self.tenants = tenants
        self.usage = usage
        self.admins = admins
        self.writer = writer
        self.budgets = budgets
        self.listener = listener
        self.pool = pool
        # The health check's own bound, shorter than the repositories'.
        self._probe = (
            None if pool is None else _AsyncPostgres(pool, None, False, health_timeout)
        )
        self._closed = False

    def __repr__(self) -> str:
        where = "in memory" if self.pool is None else f"pool {self.pool.name!r}"
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {where} {state}>"

    # -- opening ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        cache: Part = True,
        listener: Part = True,
        writer: Part = True,
        budgets: Part = True,
        cipher: KeyCipher | None = None,
        listen_url: str | None = None,
        prepare: bool = True,
        clock: Clock | None = None,
        min_size: int = MIN_SIZE,
        max_size: int = MAX_SIZE,
        timeout: float = TIMEOUT,
    ) -> Opening[Store]:
        """A store on the PostgreSQL database at `url` (a URL or conninfo).

        `Store.open(url)` returns the store (a context manager); what
        `AsyncStore.open(url)` returns is awaited for the store, or entered as an
        asynchronous context manager (the store is closed on leaving it).

        `cache`, `listener`, `writer` and `budgets` are True (the part, with its
        defaults), False (none), or a dict of keyword options for that part's
        constructor (`cache={"ttl": 60}`, `writer={"spool": path}`). The
        listener needs the cache; it connects to `listen_url` if given, else to
        `url`: it must be a direct connection (not through a transaction-pooling
        proxy). `cipher`, `prepare` and
        `clock` go to every part that takes them; `min_size`, `max_size` and
        `timeout` to the pool (`create_pool`).

        Returns once the database answered and the listener listens, each within
        `timeout` seconds; else raises `DatabaseUnreachable` (or
        `StoreUnavailable`), having closed everything it opened.
        """
        return opening(
            cls._open(
                url,
                cache=cache,
                listener=listener,
                writer=writer,
                budgets=budgets,
                cipher=cipher,
                listen_url=listen_url,
                prepare=prepare,
                clock=clock,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
            )
        )

    @classmethod
    def _open(
        cls,
        url: str,
        *,
        cache: Part,
        listener: Part,
        writer: Part,
        budgets: Part,
        cipher: KeyCipher | None,
        listen_url: str | None,
        prepare: bool,
        clock: Clock | None,
        min_size: int,
        max_size: int,
        timeout: float,
    ) -> Store:
        cache_options = part_options("cache", cache)
        listener_options = _listener_options(listener, cache_options)
        writer_options = part_options("writer", writer)
        budget_options = part_options("budgets", budgets)
        for name, value in (("url", url), ("listen_url", listen_url)):
            if value is not None and not isinstance(value, str):
                raise InvalidInput(name, "must be a PostgreSQL URL or conninfo string")
        try:
            pool = create_pool(
                url, min_size=min_size, max_size=max_size, timeout=timeout
            )
        except psycopg.ProgrammingError:
            # From None: the driver's message may quote the URL, password and all.
            raise InvalidInput(
                "url", "is not a valid PostgreSQL URL or conninfo"
            ) from None
        guard: BudgetGuard | None = None
        made_listener: TenantCacheListener | None = None
        made_writer: UsageWriter | None = None
        try:
            inner = PostgresTenantRepository(
                pool, clock=clock, cipher=cipher, prepare=prepare
            )
            usage = PostgresUsageRepository(pool, clock=clock, prepare=prepare)
            admins = PostgresAdminUserRepository(pool, clock=clock, prepare=prepare)
            _check_database(pool, url, timeout)
            tenants: TenantRepository = inner
            if cache_options is not None:
                tenants = CachedTenantRepository(
                    inner, **{"clock": clock, **cache_options}
                )
            if writer_options is not None:
                made_writer = UsageWriter(usage, **{"clock": clock, **writer_options})
            if budget_options is not None:
                # Settles go through the writer: a request's settle costs no
                # round trip, and its hold stays until the record commits.
                guard = BudgetGuard(
                    tenants,
                    usage,
                    **{"clock": clock, "writer": made_writer, **budget_options},
                )
            if listener_options is not None:
                assert isinstance(tenants, CachedTenantRepository)
                made_listener = TenantCacheListener(
                    listen_url or url, tenants, **listener_options
                )
                made_listener.start()
                if not made_listener.wait_connected(timeout):
                    raise DatabaseUnreachable(
                        "cannot open the store: the cache listener is not "
                        f"listening to {redact_conninfo(listen_url or url)} after "
                        f"{timeout:g} s (the database is out of reach on that "
                        "path, or notifications do not come back: a "
                        "transaction-pooling proxy, or migrations not applied; "
                        "the tenantstore log says which)"
                    )
        except BaseException:
            _close_parts(made_writer, guard, made_listener, pool, None)
            raise
        return cls(
            tenants=tenants,
            usage=usage,
            admins=admins,
            writer=made_writer,
            budgets=guard,
            listener=made_listener,
            pool=pool,
        )

    @classmethod
    def memory(
        cls,
        *,
        clock: Clock | None = None,
        cache: Part = True,
        writer: Part = True,
        budgets: Part = True,
        cipher: KeyCipher | None = None,
    ) -> Store:
        """A store on the in-memory backends, with the same parts as `open`
        (no listener, no pool). The asyncio writer needs a running loop."""
        cache_options = part_options("cache", cache)
        writer_options = part_options("writer", writer)
        budget_options = part_options("budgets", budgets)
        inner = InMemoryTenantRepository(clock=clock, cipher=cipher)
        usage = InMemoryUsageRepository(inner, clock=clock)
        admins = InMemoryAdminUserRepository(inner, clock=clock)
        tenants: TenantRepository = inner
        if cache_options is not None:
            tenants = CachedTenantRepository(inner, **{"clock": clock, **cache_options})
        guard = None
        if budget_options is not None:
            # Made first (it starts nothing) so that bad options leave no writer.
            guard = BudgetGuard(tenants, usage, **{"clock": clock, **budget_options})
        made_writer = None
        if writer_options is not None:  # last: nothing else runs yet
            made_writer = UsageWriter(usage, **{"clock": clock, **writer_options})
            if budget_options is not None and "writer" not in budget_options:
                # Settles go through the writer (as in `open`).
                guard = BudgetGuard(
                    tenants,
                    usage,
                    **{"clock": clock, "writer": made_writer, **budget_options},
                )
        return cls(
            tenants=tenants,
            usage=usage,
            admins=admins,
            writer=made_writer,
            budgets=guard,
        )

    # -- health -----------------------------------------------------------------

    def health(self) -> StoreHealth:
        """Each part's health, and `ok` when all are healthy; never raises.

        The database answers a `SELECT 1` within a second, the listener listens,
        the writer's backlog is below its `max_pending` and its writes are not
        failing, the pool is open (its numbers in `detail`).
        """
        listener = self.listener
        writer = self.writer
        pool = self.pool
        return StoreHealth(
            database=self._database_health(),
            listener=None
            if listener is None
            else listener_health(
                listener.connected, listener.reconnects, listener.heartbeats_missed
            ),
            writer=None if writer is None else _writer_health(writer),
            pool=None
            if pool is None
            else pool_health(pool.get_stats(), pool.max_size, pool.closed),
        )

    def _database_health(self) -> PartHealth:
        if self._closed:
            return PartHealth(False, "the store is closed")
        probe = self._probe
        if probe is None:
            return PartHealth(True, "in memory")
        try:
            probe._run(_PING, None, ONE, retry=True)
        except StoreUnavailable as exc:
            return database_health(exc)
        except TenantStoreError as exc:
            return PartHealth(False, f"{type(exc).__name__}: {exc}")
        return database_health(None)

    # -- closing ----------------------------------------------------------------

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Close every part, in order: the writer takes no more records and
        writes what is pending (for up to `timeout` seconds; None: until done),
        the budget guard gives its leased shares back, the listener stops, the
        pool closes. A step that fails does not keep the later ones from
        running; its error is raised at the end (the writer's `StoreUnavailable`
        when records were left unwritten). Closing again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        _close_parts(self.writer, self.budgets, self.listener, self.pool, timeout)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _listener_options(
    listener: Part, cache_options: dict[str, Any] | None
) -> dict[str, Any] | None:
    options = part_options("listener", listener)
    if cache_options is None and options:
        raise InvalidInput("listener", "needs the cache (cache=False was given)")
    # Without a cache there is nothing to keep in step: listener=True means
    # "the cache's listener", if there is a cache.
    return None if cache_options is None else options


def _check_database(pool: ConnectionPool, url: str, timeout: float) -> None:
    """`SELECT 1` within `timeout`, or a clear error saying where it failed."""
    try:
        _AsyncPostgres(pool, None, False, timeout)._run(_PING, None, ONE, retry=True)
    except StoreUnavailable as exc:
        error = DatabaseUnreachable if isinstance(exc, DatabaseUnreachable) else None
        raise (error or StoreUnavailable)(
            f"cannot open the store: {redact_conninfo(url)} did not answer within "
            f"{timeout:g} s ({exc})"
        ) from exc


def _writer_health(writer: UsageWriter) -> PartHealth:
    core = writer._core
    since = core.failing_since
    return writer_health(
        writer.stats(),
        core.queue.max_pending,
        None if since is None else time.monotonic() - since,
        core.closed,
    )


def _close_parts(
    writer: UsageWriter | None,
    budgets: BudgetGuard | None,
    listener: TenantCacheListener | None,
    pool: ConnectionPool | None,
    timeout: float | None,
) -> None:
    """Close what is given, in this order, each step whatever the others did;
    raise the first failure at the end (later ones are logged)."""
    closes: list[tuple[str, Callable[[], Any] | None]] = [
        (
            "the usage writer",
            None if writer is None else functools.partial(writer.close, timeout),
        ),
        ("the budget guard", None if budgets is None else budgets.close),
        ("the cache listener", None if listener is None else listener.close),
        ("the pool", None if pool is None else pool.close),
    ]
    failures: list[tuple[str, BaseException]] = []
    for part, close in closes:
        if close is None:
            continue
        try:
            close()
        except BaseException as exc:
            failures.append((part, exc))
    if not failures:
        return
    for part, later in failures[1:]:
        _log.warning("closing the store: %s failed too (%r)", part, later)
    raise failures[0][1]
