"""The audit log: `AuditEvent`, `AuditChange`, who acts (`acting_as`), and reading.

Every INSERT, UPDATE and DELETE on tenants and admin users is an entry, written by
the database itself on PostgreSQL (a trigger in the writing transaction, migration
013: whoever the writer is) and by the in-memory backend under its own lock, by the
same rules: the changed columns with their old and new values, a secret column
(name ending in ``_hash`` or ``_encrypted``, or holding ``password``) only as
"redacted", the actor the writer passed. Reading is `list_audit` on the tenant and
admin-user repositories; nothing here does I/O.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from ._rows import utc
from ._validation import text, utc_datetime
from .errors import InvalidInput

__all__ = ["AuditChange", "AuditEvent", "acting_as"]

# The page size list_audit takes: at least 1, at most this.
LIMIT_MAX: Final = 1000
ACTOR_MAX: Final = 255

_SECRET: Final = re.compile(r"(_hash|_encrypted)$|password")


def is_secret(column: str) -> bool:
    """Whether a column's values stay out of the log (the trigger's rule, too)."""
    return _SECRET.search(column) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditChange:
    """One column of one audited change.

    `old` is None for an INSERT (or a column that was NULL), `new` None for a
    DELETE. For a secret column `redacted` is True and both are None: the log
    says that it changed, never what it was or became.
    """

    __module__ = "tenantstore"

    field: str
    old: Any = None
    new: Any = None
    redacted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One change to a tenant or an admin user, as the audit log holds it.

    `id` increases with every entry (its order is the log's order: newest first is
    highest first; pass the last `id` of a page as `before=` for the next one).
    `at` is the writer's clock for writes through tenantstore (the instant it
    stamped `updated_at` with), else the database server's statement time. `actor`
    is who the writer said acted (`acting_as`, a repository's `actor=`, the CLI's
    `--actor`), else None; on PostgreSQL `database_user` (the role that logged in)
    and `application_name` are recorded for every entry, whoever wrote it (both
    None in memory). `action` is "INSERT", "UPDATE", "DELETE" (or "TRUNCATE", with
    `entity_id` None, from a writer that truncated the table). `changes` holds the
    columns whose value differs, by name.
    """

    __module__ = "tenantstore"

    id: int
    at: datetime
    table: str
    action: str
    entity_id: str | None
    actor: str | None
    database_user: str | None
    application_name: str | None
    changes: tuple[AuditChange, ...]

    @property
    def who(self) -> str:
        """The actor, else ``role (application)`` from the database, else "unknown"."""
        if self.actor is not None:
            return self.actor
        if self.database_user is not None:
            app = self.application_name
            return f"{self.database_user} ({app})" if app else self.database_user
        return "unknown"

    def change(self, field: str) -> AuditChange | None:
        """The change of `field`, or None when it did not change."""
        for change in self.changes:
            if change.field == field:
                return change
        return None


# -- who acts ---------------------------------------------------------------------

_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tenantstore_actor", default=None
)


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Record `actor` on every audited write made inside the block (and in tasks
    it starts), on every repository, sync or async; it wins over a repository's
    own `actor=`. A gateway's admin API sets it once per request::

        with acting_as("alice"):
            tenants.set_enabled(tenant_id, False)
    """
    token = _ACTOR.set(actor_name(actor))
    try:
        yield
    finally:
        _ACTOR.reset(token)


def actor_name(actor: object) -> str:
    """A valid actor: a non-blank str of at most 255 characters, no NUL."""
    return text("actor", actor, ACTOR_MAX, allow_blank=False)


def current_actor(default: str | None) -> str | None:
    """The actor of a write now: `acting_as`'s, else the repository's default."""
    actor = _ACTOR.get()
    return default if actor is None else actor


def audit_params(actor: str | None, now: datetime) -> dict[str, str]:
    """The parameters of the audit context every audited statement sets."""
    return {"audit_actor": actor or "", "audit_at": now.isoformat()}


# -- reading ----------------------------------------------------------------------


def audit_query(
    since: object, entity_id: object, limit: object, before: object
) -> tuple[datetime | None, int | None]:
    """Validate list_audit's arguments; (since in UTC, before) to filter with.

    `entity_id` is a lookup: anything that is not an id finds nothing, and the
    caller tests it with `is_canonical_id`.
    """
    start = None if since is None else utc_datetime("since", since)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput("limit", f"must be an int, not {type(limit).__name__}")
    if not 1 <= limit <= LIMIT_MAX:
        raise InvalidInput("limit", f"must be between 1 and {LIMIT_MAX}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise InvalidInput("before", f"must be an int, not {type(before).__name__}")
    return start, before


def _value(field: str, value: Any) -> Any:
    """A JSON value from the log as the model holds it: arrays as tuples,
    timestamps (columns named *_at) as aware datetimes, numbers exact."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, str) and field.endswith("_at"):
        try:
            return utc(datetime.fromisoformat(value))
        except ValueError:
            return value
    return value


def changes_from_json(document: str) -> tuple[AuditChange, ...]:
    """The trigger's `changes` (jsonb as text) as AuditChanges, by field name."""
    parsed: dict[str, Any] = json.loads(document, parse_float=Decimal)
    out = []
    for field in sorted(parsed):
        entry = parsed[field]
        if entry.get("redacted"):
            out.append(AuditChange(field=field, redacted=True))
        else:
            out.append(
                AuditChange(
                    field=field,
                    old=_value(field, entry.get("old")),
                    new=_value(field, entry.get("new")),
                )
            )
    return tuple(out)


def event_from_row(row: tuple[Any, ...]) -> AuditEvent:
    """An AuditEvent from a row of `_sql.AUDIT_COLUMNS`."""
    return AuditEvent(
        id=row[0],
        at=utc(row[1]),
        table=row[2],
        action=row[3],
        entity_id=row[4],
        actor=row[5],
        database_user=row[6],
        application_name=row[7],
        changes=changes_from_json(row[8]),
    )


# -- the in-memory log ------------------------------------------------------------


def diff(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> tuple[AuditChange, ...]:
    """The trigger's diff, in memory: columns whose value differs (a missing row
    is all NULL; an empty tuple, like an empty array, is a value), secrets
    redacted."""
    columns = set(old or ()) | set(new or ())
    out = []
    for field in sorted(columns):
        before = None if old is None else old.get(field)
        after = None if new is None else new.get(field)
        if before == after and type(before) is type(after):
            continue
        if is_secret(field):
            out.append(AuditChange(field=field, redacted=True))
        else:
            out.append(AuditChange(field=field, old=before, new=after))
    return tuple(out)


class AuditLog:
    """The in-memory backend's log: entries in order, under the store's lock."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def append(
        self,
        *,
        at: datetime,
        table: str,
        action: str,
        entity_id: str,
        actor: str | None,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
    ) -> None:
        changes = diff(old, new)
        if action == "UPDATE" and not changes:
            return  # as the trigger: an UPDATE that changes nothing is no entry
        self.events.append(
            AuditEvent(
                id=len(self.events) + 1,
                at=at,
                table=table,
                action=action,
                entity_id=entity_id,
                actor=actor,
                database_user=None,
                application_name=None,
                changes=changes,
            )
        )

    def select(
        self,
        since: datetime | None,
        entity_id: str | None,
        limit: int,
        before: int | None,
    ) -> list[AuditEvent]:
        found = []
        for event in reversed(self.events):
            if before is not None and event.id >= before:
                continue
            if since is not None and event.at < since:
                continue
            if entity_id is not None and event.entity_id != entity_id:
                continue
            found.append(event)
            if len(found) == limit:
                break
        return found
