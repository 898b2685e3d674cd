"""``tenantstore usage summary|prune``: a tenant's usage by day and model; pruning.

``usage summary TENANT`` reads the daily totals (never a scan of rows): one line
per UTC day and model from ``--since`` (default: the first day of the current UTC
month) up to, not including, ``--until``, then a total per model and the total of
all; ``--json`` for a machine, costs as exact decimal strings. ``usage prune
--before DATE`` deletes the records older than the start (00:00 UTC) of that day,
in batches, while the totals (and so budgets and summaries) keep counting them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from .._models import UsageSummary
from .._sync.postgres import PostgresTenantRepository, PostgresUsageRepository
from ..errors import TenantNotFound
from ._connection import as_pool, connect
from ._format import print_json, print_table, printable
from ._options import uuid_arg

__all__ = ["add_parser"]


def _day(value: str) -> date:
    """An argparse type: a day, YYYY-MM-DD (a UTC day)."""
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "must be a date, YYYY-MM-DD (a UTC day), e.g. 2026-12-01"
        ) from None


def add_parser(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    group = groups.add_parser(
        "usage",
        help="a tenant's usage by day and model; prune old usage records",
        description="Usage read from the daily totals, and pruning of old records.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    summary = actions.add_parser(
        "summary", parents=common, help="usage by UTC day and model, with totals"
    )
    summary.add_argument("tenant", type=uuid_arg, metavar="TENANT", help="its id")
    summary.add_argument(
        "--since",
        type=_day,
        metavar="DATE",
        help="first UTC day, YYYY-MM-DD (default: the 1st of the current UTC month)",
    )
    summary.add_argument(
        "--until",
        type=_day,
        metavar="DATE",
        help="the UTC day to stop before, YYYY-MM-DD (default: no end)",
    )
    summary.add_argument(
        "--json", action="store_true", help="print JSON instead of text"
    )
    summary.set_defaults(handler=_summary)
    prune = actions.add_parser(
        "prune",
        parents=common,
        help="delete records older than a day; the totals keep counting them",
    )
    prune.add_argument(
        "--before",
        type=_day,
        metavar="DATE",
        required=True,
        help="delete the records from before 00:00 UTC of this day, YYYY-MM-DD",
    )
    prune.set_defaults(handler=_prune)


def _summary_json(item: UsageSummary) -> dict[str, Any]:
    return {
        "day": item.day.isoformat(),
        "model": item.model,
        "records": item.records,
        "input_tokens": item.input_tokens,
        "output_tokens": item.output_tokens,
        "cost_usd": str(item.cost_usd),
    }


def _totals(items: Sequence[UsageSummary]) -> dict[str, Any]:
    return {
        "records": sum(i.records for i in items),
        "input_tokens": sum(i.input_tokens for i in items),
        "output_tokens": sum(i.output_tokens for i in items),
        "cost_usd": str(sum((i.cost_usd for i in items), Decimal(0))),
    }


def _by_model(items: Sequence[UsageSummary]) -> dict[str, dict[str, Any]]:
    """The totals of each model, by model name."""
    models = sorted({i.model for i in items})
    return {m: _totals([i for i in items if i.model == m]) for m in models}


def _summary(args: argparse.Namespace, url: str) -> int:
    since: date = args.since or datetime.now(UTC).date().replace(day=1)
    until: date | None = args.until
    if until is not None and until < since:
        print("tenantstore: error: --until must not be before --since", file=sys.stderr)
        return 2
    with connect(url) as conn:
        pool = as_pool(conn)
        try:
            PostgresTenantRepository(pool, prepare=False).get_by_id(args.tenant)
        except TenantNotFound:
            print(f"tenantstore: error: no tenant {args.tenant}", file=sys.stderr)
            return 1
        usage = PostgresUsageRepository(pool, prepare=False)
        items = usage.get_tenant_usage_summary(args.tenant, since, until)
    totals = _totals(items)
    if args.json:
        print_json(
            {
                "tenant_id": args.tenant,
                "since": since.isoformat(),
                "until": None if until is None else until.isoformat(),
                "days": [_summary_json(i) for i in items],
                "models": _by_model(items),
                "totals": totals,
            }
        )
        return 0
    until_text = "" if until is None else f" until {until.isoformat()}"
    print(f"usage of {args.tenant} since {since.isoformat()}{until_text} (UTC days)")
    if not items:
        print("no usage")
        return 0
    rows = [
        (
            i.day.isoformat(),
            printable(i.model),
            str(i.records),
            str(i.input_tokens),
            str(i.output_tokens),
            str(i.cost_usd),
        )
        for i in items
    ]
    # Then a total per model, and the total of everything.
    for model, total in (*_by_model(items).items(), ("", totals)):
        rows.append(
            (
                "total",
                printable(model),
                str(total["records"]),
                str(total["input_tokens"]),
                str(total["output_tokens"]),
                total["cost_usd"],
            )
        )
    header = ("DAY", "MODEL", "RECORDS", "INPUT_TOKENS", "OUTPUT_TOKENS", "COST_USD")
    print_table(header, rows, right=frozenset({2, 3, 4, 5}))
    return 0


def _prune(args: argparse.Namespace, url: str) -> int:
    before = datetime.combine(args.before, time(), UTC)
    with connect(url) as conn:
        usage = PostgresUsageRepository(as_pool(conn), prepare=False)
        pruned = usage.prune_usage(before)
    print(
        f"pruned {pruned} usage records from before {before.isoformat()}; "
        "the totals (budgets, summaries) keep counting them"
    )
    return 0
