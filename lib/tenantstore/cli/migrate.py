"""``tenantstore migrate up|down|status|force``: schema migrations.

Recorded in ``schema_migrations`` exactly as golang-migrate records them; the work
is `tenantstore.migrate`'s, which opens its own connection.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from .. import migrate

__all__ = ["add_parser"]


def add_parser(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    group = groups.add_parser(
        "migrate",
        help="apply, roll back or inspect schema migrations",
        description="Schema migrations, recorded in schema_migrations exactly as "
        "golang-migrate records them.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    # How long each DDL step waits for its locks while the services keep serving,
    # and how often a step that did not get them is tried again.
    locking = argparse.ArgumentParser(add_help=False)
    locking.add_argument(
        "--lock-timeout",
        type=float,
        default=migrate.DEFAULT_LOCK_TIMEOUT,
        metavar="SECONDS",
        help="longest wait for a lock per step (default %(default)s)",
    )
    locking.add_argument(
        "--lock-retries",
        type=int,
        default=migrate.DEFAULT_LOCK_RETRIES,
        metavar="N",
        help="tries again after a lock timeout or deadlock (default %(default)s)",
    )
    common = [*common, locking]

    up = actions.add_parser("up", parents=common, help="apply pending migrations")
    up.add_argument(
        "--target", type=int, metavar="VERSION", help="stop at this version"
    )
    up.set_defaults(handler=_up)

    down = actions.add_parser("down", parents=common, help="roll back migrations")
    how_many = down.add_mutually_exclusive_group()
    how_many.add_argument(
        "--steps", type=int, default=1, metavar="N", help="how many (default 1)"
    )
    how_many.add_argument("--all", action="store_true", help="every one of them")
    down.set_defaults(handler=_down)

    status = actions.add_parser(
        "status", parents=common, help="show the version and what is pending"
    )
    status.set_defaults(handler=_status)

    force = actions.add_parser(
        "force",
        parents=common,
        help="record VERSION as clean without running anything (-1: none)",
    )
    force.add_argument("version", type=int, metavar="VERSION")
    force.set_defaults(handler=_force)


def _print_notice(out: TextIO) -> Callable[[migrate.Notice], None]:
    def show(notice: migrate.Notice) -> None:
        print(f"{notice.file}: {notice.severity}: {notice.message}", file=out)

    return show


def _up(args: argparse.Namespace, url: str) -> int:
    applied = migrate.up(
        url,
        args.target,
        on_notice=_print_notice(sys.stdout),
        lock_timeout=args.lock_timeout,
        lock_retries=args.lock_retries,
    )
    if not applied:
        print("nothing to apply: already at the target version")
    for version in applied:
        print(f"applied {version}")
    return 0


def _down(args: argparse.Namespace, url: str) -> int:
    steps = None if args.all else args.steps
    rolled_back = migrate.down(
        url,
        steps,
        on_notice=_print_notice(sys.stdout),
        lock_timeout=args.lock_timeout,
        lock_retries=args.lock_retries,
    )
    if not rolled_back:
        print("nothing to roll back: no migration is applied")
    for version in rolled_back:
        print(f"rolled back {version}")
    return 0


def _status(args: argparse.Namespace, url: str) -> int:
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


def _force(args: argparse.Namespace, url: str) -> int:
    version: int | None = args.version
    if version == -1:  # golang-migrate's spelling of "no version"
        version = None
    migrate.force(url, version)
    print(f"schema_migrations now says version {args.version}, clean")
    return 0
