"""The listener's counters as one snapshot (`ListenerStats`), shared by both twins.

No I/O: what the listener does with its connection is `_async/listener.py`'s.
"""

from __future__ import annotations

import dataclasses

__all__ = ["ListenerStats"]


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerStats:
    """A snapshot of a `TenantCacheListener`'s state and counters since it started.

    `connected` is whether it listens now (its caches may serve fresh entries);
    `reconnects` counts the times LISTEN was re-established after a loss,
    `notifications` the changes applied to its caches, `heartbeats` the pings that
    came back and `heartbeats_missed` the losses for want of one; `revalidations`
    counts the queries run each time it listened again and `revalidation_dropped`
    the entries they dropped (changed, disabled or gone meanwhile).
    """

    __module__ = "tenantstore"

    connected: bool
    reconnects: int
    notifications: int
    heartbeats: int
    heartbeats_missed: int
    revalidations: int
    revalidation_dropped: int
