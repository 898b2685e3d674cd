"""What `Store` and `AsyncStore` share, without I/O: how a part is asked for, and
the health report (`StoreHealth`, one `PartHealth` per part) and its rules.

The rules, part by part (a part the store does not have is `None`, and healthy):

- `database`: a `SELECT 1` answered within the health bound (always healthy in
  memory);
- `listener`: it listens, and its heartbeat comes back (else the cache serves
  nothing from memory as fresh: lookups go to the database);
- `writer`: its backlog is below `max_pending` (else `submit` refuses), and the
  batch it writes is not failing (an outage: records are kept and retried);
- `pool`: open; its size, idle connections and waiting requests are reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from ._writerstate import UsageWriterStats
from .errors import InvalidInput, StoreUnavailable

__all__ = [
    "HEALTH_TIMEOUT",
    "Part",
    "PartHealth",
    "StoreHealth",
    "database_health",
    "listener_health",
    "part_options",
    "pool_health",
    "writer_health",
]

Part: TypeAlias = bool | Mapping[str, Any]
"""How a store is asked for a part: True (defaults), False (none), or a dict of
keyword options for that part's constructor."""

HEALTH_TIMEOUT: Final = 1.0
"""How long `health()` waits for its `SELECT 1` (seconds; see the repositories'
`timeout` for what the bound covers)."""


def part_options(name: str, value: object) -> dict[str, Any] | None:
    """The keyword options for part `name`, or None when it is not wanted."""
    if value is True:
        return {}
    if value is False:
        return None
    if isinstance(value, Mapping) and all(type(key) is str for key in value):
        return dict(value)
    raise InvalidInput(name, "must be True, False or a dict of keyword options")


@dataclass(frozen=True, slots=True)
class PartHealth:
    """One part of a store: `ok`, and a line for an operator (no secret in it)."""

    __module__ = "tenantstore"

    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What `Store.health()` found: `ok` when every part the store has is healthy.

    A part the store does not have (no listener without a cache, no pool in
    memory, writer=False) is None. `dataclasses.asdict` gives it as JSON-ready
    values, for a health endpoint.
    """

    __module__ = "tenantstore"

    ok: bool = field(init=False)
    database: PartHealth
    listener: PartHealth | None = None
    writer: PartHealth | None = None
    pool: PartHealth | None = None

    def __post_init__(self) -> None:
        parts = (self.database, self.listener, self.writer, self.pool)
        ok = all(part.ok for part in parts if part is not None)
        object.__setattr__(self, "ok", ok)


def database_health(error: StoreUnavailable | None) -> PartHealth:
    """The database part, from the outcome of its `SELECT 1`."""
    if error is None:
        return PartHealth(True, "answered SELECT 1")
    return PartHealth(False, f"{type(error).__name__}: {error}")


def listener_health(
    connected: bool, reconnects: int, heartbeats_missed: int
) -> PartHealth:
    if connected:
        return PartHealth(True, f"listening ({reconnects} reconnect(s) so far)")
    return PartHealth(
        False,
        "not listening: the cache serves nothing from memory as fresh "
        f"({reconnects} reconnect(s), {heartbeats_missed} missed heartbeat(s) so far)",
    )


def writer_health(
    stats: UsageWriterStats,
    max_pending: int,
    failing_for: float | None,
    closed: bool,
) -> PartHealth:
    """The writer part: `failing_for` is how long its batch has been failing."""
    backlog = f"{stats.pending} of at most {max_pending} record(s) pending"
    if closed:
        return PartHealth(False, f"closed; {backlog}")
    if failing_for is not None:
        return PartHealth(
            False,
            f"writes failing for {failing_for:.1f} s, retrying; {backlog} "
            f"({stats.retries} retries so far)",
        )
    if stats.pending >= max_pending:
        return PartHealth(False, f"full, submit refuses records: {backlog}")
    return PartHealth(True, backlog)


def pool_health(stats: Mapping[str, int], max_size: int, closed: bool) -> PartHealth:
    """The pool part, from psycopg_pool's `get_stats()`."""
    size = stats.get("pool_size", 0)
    available = stats.get("pool_available", 0)
    waiting = stats.get("requests_waiting", 0)
    numbers = (
        f"{size} of at most {max_size} connection(s), {available} idle, "
        f"{waiting} request(s) waiting"
    )
    if closed:
        return PartHealth(False, f"closed; {numbers}")
    return PartHealth(True, numbers)
