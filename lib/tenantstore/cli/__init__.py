"""The command line, ``python -m tenantstore`` (or ``tenantstore``): operator tasks.

One module per command group: ``migrate`` (`tenantstore.migrate`), ``tenant``
(create, list, show, enable, disable, delete, rotate-key, reveal-key), ``admin``
(the admin API's users: create, list, enable, disable, set-password, delete),
``audit`` (list the audit log) and ``usage`` (a tenant's usage summary by day and
model; prune old records); `_format` holds the output shared by all, and
`_connection` the one plain connection each command uses. This module parses
arguments and runs the command's handler. The database is ``$DATABASE_URL`` or
``--database-url`` (a password in the latter draws a warning: ``ps`` and shell
history see the command line). Writes are audited as ``--actor``, else the OS user.
Errors are one line on stderr, never a traceback: exit status 2 for usage (no
database given, a bad argument, a value the domain rejects), 1 when the work could
not be done (not found, a conflict, database unreachable, dirty, a migration
failed). Secrets never come from the command line (passwords are prompted for or
read from stdin; the cipher ring from the environment or a file).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..errors import InvalidInput, TenantStoreError
from . import _options, admin, audit, tenant, usage
from . import migrate as migrate_group

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, str], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 1 failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.cipher_keys_on_argv:
        print(
            f"{parser.prog}: error: --cipher-keys is not accepted: on the command "
            "line `ps` and shell history see the ring; put it in "
            f"${tenant.CIPHER_KEYS_ENV} or in a file passed with --cipher-keys-file "
            "PATH",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "password_on_argv", False):
        print(
            f"{parser.prog}: error: --password is not accepted: on the command line "
            "`ps` and shell history see it; type it at the prompt or pass "
            "--password-stdin",
            file=sys.stderr,
        )
        return 2
    if args.database_url and _has_password(args.database_url):
        print(
            f"{parser.prog}: warning: the --database-url given on the command line "
            "holds a password, which `ps` and shell history can see: set "
            "DATABASE_URL, PGPASSWORD or ~/.pgpass instead",
            file=sys.stderr,
        )
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        print(
            f"{parser.prog} {args.group}: error: no database given: "
            "pass --database-url URL or set DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    handler: Handler = args.handler
    try:
        return handler(args, url)
    except InvalidInput as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TenantStoreError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subparser per command group."""
    parser = argparse.ArgumentParser(
        prog="tenantstore",
        description="Operate a tenantstore database.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    database = _database_option()
    acting = _actor_option()
    migrate_group.add_parser(groups, [database])
    tenant.add_parser(groups, [database, acting])
    admin.add_parser(groups, [database, acting])
    audit.add_parser(groups, [database])
    usage.add_parser(groups, [database])
    return parser


def _database_option() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL or conninfo string (default: $DATABASE_URL; keep a "
        "password out of it: ps and shell history see the command line)",
    )
    # The ring used to be an option: refuse it by name, on every command, rather
    # than let argparse echo it as an unknown argument.
    common.add_argument(
        "--cipher-keys",
        dest="cipher_keys_on_argv",
        nargs="?",
        default=False,
        action=_options.Refused,
        help=argparse.SUPPRESS,
    )
    return common


def _actor_option() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--actor",
        metavar="NAME",
        help="who is acting, as the audit log records it (default: the OS user)",
    )
    return common


# user:password@ in a URL, or password= in a conninfo string.
_PASSWORD_IN_URL: Final = re.compile(r"://[^/?#@]*:[^/?#@]*@|password\s*=", re.I)


def _has_password(url: str) -> bool:
    """Whether a connection string carries a password (never says which)."""
    try:
        return bool(conninfo_to_dict(url).get("password"))
    except psycopg.ProgrammingError:
        # Malformed: its own error follows; warn if it looks like it holds one.
        return _PASSWORD_IN_URL.search(url) is not None
