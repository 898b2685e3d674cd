"""``tenantstore audit list``: the audit log, newest first.

Every change to tenants and admin users, whoever made it (this library, the Go
service, psql): when, who, what, and which fields changed (a secret only as
"redacted"). ``--tenant ID`` keeps one tenant's (or admin user's) entries,
``--since WHEN`` those from then on, ``--before ENTRY`` pages back from an entry id.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from .._audit import LIMIT_MAX, AuditChange, AuditEvent
from .._sync.postgres import PostgresTenantRepository
from ._connection import as_pool, connect
from ._format import print_json, print_table, printable, shorten
from ._options import uuid_arg

__all__ = ["add_parser"]


def _since(value: str) -> datetime:
    """An argparse type: an ISO 8601 date or date-time; without an offset, UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "must be an ISO 8601 date or date-time, e.g. 2026-12-01 or "
            "2026-12-01T09:30:00+01:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {LIMIT_MAX}")
    return limit


def add_parser(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    group = groups.add_parser(
        "audit",
        help="read the audit log of every change to tenants and admin users",
        description="The audit log, written by the database for every writer.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=common, help="entries, newest first")
    listing.add_argument(
        "--tenant",
        type=uuid_arg,
        metavar="ID",
        help="only this tenant's (or admin user's) entries",
    )
    listing.add_argument(
        "--since", type=_since, metavar="WHEN", help="only entries from then on"
    )
    listing.add_argument(
        "--limit", type=_limit, default=100, metavar="N", help="at most N (100)"
    )
    listing.add_argument(
        "--before",
        type=int,
        metavar="ENTRY",
        help="only entries older than this entry id (the next page)",
    )
    listing.add_argument(
        "--json", action="store_true", help="print JSON instead of text"
    )
    listing.set_defaults(handler=_list)


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


def _change_json(change: AuditChange) -> dict[str, Any]:
    if change.redacted:
        return {"redacted": True}
    return {"old": _json_value(change.old), "new": _json_value(change.new)}


def _event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "who": event.who,
        "actor": event.actor,
        "database_user": event.database_user,
        "application_name": event.application_name,
        "table": event.table,
        "action": event.action,
        "entity_id": event.entity_id,
        "changes": {c.field: _change_json(c) for c in event.changes},
    }


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(shorten(value, 30))
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _change_text(event: AuditEvent) -> str:
    """The changed fields, briefly: values for an UPDATE, names otherwise."""
    if event.action != "UPDATE":
        return ", ".join(c.field for c in event.changes if c.field != "id")
    parts = []
    for change in event.changes:
        if change.field == "updated_at":
            continue
        if change.redacted:
            parts.append(f"{change.field} (redacted)")
        else:
            parts.append(
                f"{change.field}: {_shown(change.old)} -> {_shown(change.new)}"
            )
    return "; ".join(parts)


def _list(args: argparse.Namespace, url: str) -> int:
    with connect(url) as conn:
        tenants = PostgresTenantRepository(as_pool(conn), prepare=False)
        events = tenants.list_audit(
            args.since, args.tenant, args.limit, before=args.before
        )
    if args.json:
        print_json([_event_json(e) for e in events])
        return 0
    if not events:
        print("no audit entries")
        return 0
    rows = [
        (
            str(e.id),
            e.at.isoformat(timespec="seconds"),
            shorten(e.who, 30),
            e.action,
            e.table,
            e.entity_id or "",
            printable(_change_text(e)),
        )
        for e in events
    ]
    header = ("ENTRY", "AT", "WHO", "ACTION", "TABLE", "ID", "CHANGES")
    print_table(header, rows, right=frozenset({0}))
    return 0
