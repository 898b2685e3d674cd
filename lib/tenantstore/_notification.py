"""What a tenant trigger's notification names (migrations 008, 011), without I/O.

`parse_notification` reads the payload a listener receives; `NOTHING` is a heartbeat's.
"""

from __future__ import annotations

import json
from typing import Final

from ._validation import is_canonical_id, is_key_hash

__all__ = ["NOTHING", "parse_notification"]

# A notification that changes nothing (a heartbeat).
NOTHING: Final[tuple[str | None, tuple[str, ...]]] = (None, ())


def parse_notification(payload: str) -> tuple[str | None, tuple[str, ...]] | None:
    """The tenant id and key hashes a trigger notification names.

    None when everything must be dropped: a TRUNCATE (every tenant is gone), or
    anything that does not parse as a row change (a listener that cannot tell what
    changed must assume everything did). `NOTHING` for a heartbeat (`"PING"`).
    """
    try:
        change = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(change, dict):
        return None
    if change.get("op") == "PING":
        return NOTHING
    if change.get("op") not in _ROW_OPS:
        return None
    tenant_id = change.get("id")
    # The previous keys' hashes since migration 011 (a rotation names three).
    values = tuple(
        change.get(name) for name in ("old", "new", "old_previous", "new_previous")
    )
    if not is_canonical_id(tenant_id) or not all(
        value is None or isinstance(value, str) for value in values
    ):
        return None
    assert isinstance(tenant_id, str)
    # A stored hash in another form (written by hand) is no key the cache uses: no
    # lookup hash can equal it, and the id still finds the tenant's entry.
    return tenant_id, tuple(v for v in values if isinstance(v, str) and is_key_hash(v))


_ROW_OPS: Final = frozenset({"INSERT", "UPDATE", "DELETE"})
