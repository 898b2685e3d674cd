"""The command line, ``python -m tenantstore`` (or ``tenantstore``): operator tasks.

``migrate up|down|status|force`` drive `tenantstore.migrate` against the database
given by ``--database-url`` or ``$DATABASE_URL``. Commands are argparse subcommand
groups, so others (``tenant ...``) slot in beside ``migrate``. Errors are one line on
stderr, never a traceback: exit status 2 for usage (no database given, a bad
argument), 1 when the work could not be done (database unreachable, dirty, a
migration failed). Nothing here touches the database except through `migrate`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from . import migrate
from .errors import InvalidInput, TenantStoreError

__all__ = ["build_parser", "main"]

_Handler = Callable[[argparse.Namespace, str], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 1 failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        print(
            f"{parser.prog} {args.group}: error: no database given: "
            "pass --database-url URL or set DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    handler: _Handler = args.handler
    try:
        return handler(args, url)
    except InvalidInput as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TenantStoreError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subparser per command group (``migrate`` today)."""
    parser = argparse.ArgumentParser(
        prog="tenantstore",
        description="Operate a tenantstore database.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    _add_migrate(groups)
    return parser


def _database_option() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL or conninfo string (default: $DATABASE_URL)",
    )
    return common


def _add_migrate(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    common = [_database_option()]
    group = groups.add_parser(
        "migrate",
        help="apply, roll back or inspect schema migrations",
        description="Schema migrations, recorded in schema_migrations exactly as "
        "golang-migrate records them.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    up = actions.add_parser("up", parents=common, help="apply pending migrations")
    up.add_argument(
        "--target", type=int, metavar="VERSION", help="stop at this version"
    )
    up.set_defaults(handler=_migrate_up)

    down = actions.add_parser("down", parents=common, help="roll back migrations")
    how_many = down.add_mutually_exclusive_group()
    how_many.add_argument(
        "--steps", type=int, default=1, metavar="N", help="how many (default 1)"
    )
    how_many.add_argument("--all", action="store_true", help="every one of them")
    down.set_defaults(handler=_migrate_down)

    status = actions.add_parser(
        "status", parents=common, help="show the version and what is pending"
    )
    status.set_defaults(handler=_migrate_status)

    force = actions.add_parser(
        "force",
        parents=common,
        help="record VERSION as clean without running anything (-1: none)",
    )
    force.add_argument("version", type=int, metavar="VERSION")
    force.set_defaults(handler=_migrate_force)


def _print_notice(out: TextIO) -> Callable[[migrate.Notice], None]:
    def show(notice: migrate.Notice) -> None:
        print(f"{notice.file}: {notice.severity}: {notice.message}", file=out)

    return show


def _migrate_up(args: argparse.Namespace, url: str) -> int:
    applied = migrate.up(url, args.target, on_notice=_print_notice(sys.stdout))
    if not applied:
        print("nothing to apply: already at the target version")
    for version in applied:
        print(f"applied {version}")
    return 0


def _migrate_down(args: argparse.Namespace, url: str) -> int:
    steps = None if args.all else args.steps
    rolled_back = migrate.down(url, steps, on_notice=_print_notice(sys.stdout))
    if not rolled_back:
        print("nothing to roll back: no migration is applied")
    for version in rolled_back:
        print(f"rolled back {version}")
    return 0


def _migrate_status(args: argparse.Namespace, url: str) -> int:
    state = migrate.status(url)
    current = "none" if state.version is None else str(state.version)
    if state.dirty:
        current += " (DIRTY: repair the schema, then `tenantstore migrate force`)"
    latest = "none" if state.latest is None else str(state.latest)
    pending = ", ".join(f"{m.version:03d}_{m.name}" for m in state.pending)
    print(f"version: {current}")
    print(f"latest:  {latest}")
    print(f"pending: {pending or 'none'}")
    return 0


def _migrate_force(args: argparse.Namespace, url: str) -> int:
    version: int | None = args.version
    if version == -1:  # golang-migrate's spelling of "no version"
        version = None
    migrate.force(url, version)
    print(f"schema_migrations now says version {args.version}, clean")
    return 0
