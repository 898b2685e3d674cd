"""``tenantstore admin ...``: the admin API's users (shared with the Go service).

``create``, ``list``, ``enable``, ``disable``, ``set-password`` and ``delete``,
through a `PostgresAdminUserRepository` on the command's one connection. A
password never comes from the command line: it is prompted for (twice, without
echo) or, with ``--password-stdin``, read as the first line of standard input.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._models import AdminUser
from .._roles import ROLES
from .._sync.admin import PostgresAdminUserRepository
from ..errors import AdminUserNotFound, InvalidInput
from ._connection import actor, as_pool, connect
from ._format import iso, print_json, print_table, printable, shorten
from ._options import Refused

__all__ = ["add_parser"]


def add_parser(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help="print JSON instead of text"
    )
    one = argparse.ArgumentParser(add_help=False)
    one.add_argument("username", metavar="USERNAME", help="the admin user's name")
    secret = argparse.ArgumentParser(add_help=False)
    secret.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead "
        "of prompting for it",
    )
    # Refused by name rather than echoed by argparse as an unknown argument.
    secret.add_argument(
        "--password",
        dest="password_on_argv",
        nargs="?",
        default=False,
        action=Refused,
        help=argparse.SUPPRESS,
    )

    group = groups.add_parser(
        "admin",
        help="create, list, enable, disable, delete admin users; set passwords",
        description="Admin users of the admin API, shared with the Go service "
        "(bcrypt passwords, roles admin, editor, viewer).",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create",
        parents=[*common, as_json, one, secret],
        help="create an admin user (the password is prompted for)",
    )
    create.add_argument(
        "--role", choices=ROLES, default="viewer", help="its role (default viewer)"
    )
    create.set_defaults(handler=_create)

    listing = actions.add_parser(
        "list", parents=[*common, as_json], help="every admin user, newest first"
    )
    listing.set_defaults(handler=_list)

    disable = actions.add_parser(
        "disable", parents=[*common, one], help="stop the user authenticating"
    )
    disable.set_defaults(handler=_disable)

    enable = actions.add_parser(
        "enable", parents=[*common, one], help="let the user authenticate again"
    )
    enable.set_defaults(handler=_enable)

    set_password = actions.add_parser(
        "set-password",
        parents=[*common, one, secret],
        help="replace the user's password (prompted for)",
    )
    set_password.set_defaults(handler=_set_password)

    delete = actions.add_parser(
        "delete", parents=[*common, one], help="delete the admin user (needs --yes)"
    )
    delete.add_argument("--yes", action="store_true", help="confirm")
    delete.set_defaults(handler=_delete)


@contextmanager
def _admins(
    args: argparse.Namespace, url: str
) -> Iterator[PostgresAdminUserRepository]:
    with connect(url) as conn:
        yield PostgresAdminUserRepository(
            as_pool(conn), prepare=False, actor=actor(args.actor)
        )


def _password(args: argparse.Namespace) -> str:
    """The new password: stdin's first line, or typed twice at a prompt."""
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise InvalidInput("password", "the two entries differ")
    return first


def _user_json(user: AdminUser) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "enabled": user.enabled,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    }


def _not_found(username: str) -> int:
    print(f"tenantstore: error: no admin user {printable(username)}", file=sys.stderr)
    return 1


def _create(args: argparse.Namespace, url: str) -> int:
    password = _password(args)
    with _admins(args, url) as admins:
        user = admins.create(args.username, password, role=args.role)
    if args.json:
        print_json(_user_json(user))
    else:
        print(
            f"created admin user {printable(user.username)} ({user.role}), id {user.id}"
        )
    return 0


def _list(args: argparse.Namespace, url: str) -> int:
    with _admins(args, url) as admins:
        users = admins.list()
    if args.json:
        print_json([_user_json(u) for u in users])
        return 0
    if not users:
        print("no admin users")
        return 0
    rows = [
        (
            shorten(u.username),
            printable(u.role),
            "yes" if u.enabled else "no",
            u.id,
            u.created_at.isoformat(timespec="seconds") if u.created_at else "",
        )
        for u in users
    ]
    print_table(("USERNAME", "ROLE", "ENABLED", "ID", "CREATED_AT"), rows)
    return 0


def _set_enabled(args: argparse.Namespace, url: str, enabled: bool) -> int:
    word = "enabled" if enabled else "disabled"
    try:
        with _admins(args, url) as admins:
            user = admins.get_by_username(args.username)
            if user.enabled == enabled:
                print(f"admin user {printable(user.username)} was already {word}")
                return 0
            admins.update(dataclasses.replace(user, enabled=enabled))
    except AdminUserNotFound:
        return _not_found(args.username)
    print(f"admin user {printable(args.username)} {word}")
    return 0


def _disable(args: argparse.Namespace, url: str) -> int:
    return _set_enabled(args, url, enabled=False)


def _enable(args: argparse.Namespace, url: str) -> int:
    return _set_enabled(args, url, enabled=True)


def _set_password(args: argparse.Namespace, url: str) -> int:
    try:
        with _admins(args, url) as admins:
            user = admins.get_by_username(args.username)
            password = _password(args)
            admins.set_password(user.id, password)
    except AdminUserNotFound:
        return _not_found(args.username)
    print(f"set the password of admin user {printable(args.username)}")
    return 0


def _delete(args: argparse.Namespace, url: str) -> int:
    if not args.yes:
        print(
            f"tenantstore: error: deleting admin user {printable(args.username)} "
            "cannot be undone: pass --yes to confirm",
            file=sys.stderr,
        )
        return 2
    try:
        with _admins(args, url) as admins:
            admins.delete(admins.get_by_username(args.username).id)
    except AdminUserNotFound:
        return _not_found(args.username)
    print(f"deleted admin user {printable(args.username)}")
    return 0
