"""The command line, ``python -m tenantstore`` (or ``tenantstore``): operator tasks.

``migrate up|down|status|force`` drive `tenantstore.migrate`; ``tenant create|list|
show|enable|disable|delete|rotate-key|reveal-key`` drive a `PostgresTenantRepository`
on a one-connection pool, one pool per command. The database is ``$DATABASE_URL`` or
``--database-url`` (a password in the latter draws a warning: ``ps`` and shell history
see the command line); the optional `KeyCipher` ring, a secret, is read only from
``$TENANTSTORE_CIPHER_KEYS`` or the file ``--cipher-keys-file PATH``, never from the
command line. Commands are argparse subcommand groups. Errors are one
line on stderr, never a traceback: exit status 2 for usage (no database given, a bad
argument, a value the domain rejects), 1 when the work could not be done (no such
tenant, a conflict, database unreachable, dirty, a migration failed). An API key is
printed only by ``create``, ``rotate-key`` and ``reveal-key``; a key hash never is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TextIO

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from . import _sql, migrate
from ._pgerrors import translate_error
from ._sync.postgres import PostgresTenantRepository
from .cipher import KeyCipher
from .errors import InvalidInput, StoreUnavailable, TenantNotFound, TenantStoreError
from .keys import generate_api_key, hash_api_key
from .models import Tenant
from .pool import create_pool

__all__ = ["build_parser", "main"]

_Handler = Callable[[argparse.Namespace, str], int]


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
            f"${CIPHER_KEYS_ENV} or in a file passed with --cipher-keys-file PATH",
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
    """The argument parser: one subparser per command group (migrate, tenant)."""
    parser = argparse.ArgumentParser(
        prog="tenantstore",
        description="Operate a tenantstore database.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    _add_migrate(groups)
    _add_tenant(groups)
    return parser


class _Refused(argparse.Action):
    """Takes a secret someone put on the command line, keeps only that it came.

    Its value is never stored nor echoed (argparse would print an unknown option's
    value in its error); `main` refuses the command.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


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
        action=_Refused,
        help=argparse.SUPPRESS,
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


# --- tenant ------------------------------------------------------------------------

CIPHER_KEYS_ENV: Final = "TENANTSTORE_CIPHER_KEYS"

# The option an operator typed, for each field the domain may reject.
_OPTION_OF_FIELD: Final = {
    "id": "--id",
    "name": "--name",
    "budget_usd": "--budget",
    "rate_limit_rpm": "--rate-limit",
    "allowed_models": "--model",
    "default_provider": "--default-provider",
    "fallback_providers": "--fallback",
}
_NAME_WIDTH: Final = 40


def _tenant_id(value: str) -> str:
    """An argparse type: any UUID spelling, returned in the canonical form.

    The message does not echo the value: a key pasted where an id belongs must not
    end up on a terminal or in a log.
    """
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError("must be a UUID") from None


def _add_tenant(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    common = [_database_option()]
    ciphered = argparse.ArgumentParser(add_help=False)
    ciphered.add_argument(
        "--cipher-keys-file",
        metavar="PATH",
        help='a file holding the KeyCipher ring "id:base64key,..." (first is '
        "primary) to encrypt or decrypt stored API keys (default: "
        f"${CIPHER_KEYS_ENV}); the ring is never taken from the command line",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help="print JSON instead of text"
    )
    one = argparse.ArgumentParser(add_help=False)
    one.add_argument("id", type=_tenant_id, metavar="ID", help="the tenant's id")

    group = groups.add_parser(
        "tenant",
        help="create, inspect, enable, disable, delete tenants; rotate their keys",
        description="Tenants: who may call the gateway, with which limits.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create",
        parents=[*common, ciphered, as_json],
        help="create a tenant and print its new API key (shown once)",
    )
    create.add_argument("--name", required=True, help="display name (required)")
    create.add_argument(
        "--budget", metavar="USD", help="budget in US dollars (default 0)"
    )
    create.add_argument(
        "--rate-limit",
        type=int,
        metavar="RPM",
        help="requests per minute (default 60)",
    )
    create.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="MODEL",
        help="an allowed model (repeat for more, order kept)",
    )
    create.add_argument("--default-provider", metavar="PROVIDER")
    create.add_argument(
        "--fallback",
        action="append",
        default=[],
        metavar="PROVIDER",
        help="a fallback provider (repeat for more, order kept)",
    )
    create.add_argument("--disabled", action="store_true", help="create it disabled")
    create.add_argument(
        "--id", type=_tenant_id, metavar="UUID", help="its id (default: a new one)"
    )
    create.set_defaults(handler=_tenant_create)

    listing = actions.add_parser(
        "list", parents=[*common, as_json], help="every tenant, newest first"
    )
    listing.set_defaults(handler=_tenant_list)

    show = actions.add_parser(
        "show", parents=[*common, as_json, one], help="one tenant's settings"
    )
    show.set_defaults(handler=_tenant_show)

    disable = actions.add_parser(
        "disable", parents=[*common, one], help="stop the tenant's key authenticating"
    )
    disable.set_defaults(handler=_tenant_disable)

    enable = actions.add_parser(
        "enable", parents=[*common, one], help="let the tenant's key authenticate again"
    )
    enable.set_defaults(handler=_tenant_enable)

    delete = actions.add_parser(
        "delete",
        parents=[*common, one],
        help="delete the tenant and its usage records (needs --yes)",
    )
    delete.add_argument(
        "--yes", action="store_true", help="confirm: this cannot be undone"
    )
    delete.set_defaults(handler=_tenant_delete)

    rotate = actions.add_parser(
        "rotate-key",
        parents=[*common, ciphered, as_json, one],
        help="replace the tenant's API key and print the new one (shown once)",
    )
    rotate.set_defaults(handler=_tenant_rotate_key)

    reveal = actions.add_parser(
        "reveal-key",
        parents=[*common, ciphered, one],
        help="decrypt and print the tenant's stored API key (needs a cipher ring)",
    )
    reveal.set_defaults(handler=_tenant_reveal_key)


class _ConnectFailures(logging.Filter):
    """Keeps psycopg_pool's reconnection warnings off stderr, remembering the last.

    The pool retries in the background and reports only `PoolTimeout`; the driver's
    error (refused, bad password, no such database) is what an operator needs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last: psycopg.Error | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        errors = [a for a in args if isinstance(a, psycopg.Error)]
        if errors and record.levelno >= logging.WARNING:
            self.last = errors[-1]
            return False
        return True


@contextmanager
def _tenants(
    url: str, cipher: KeyCipher | None = None
) -> Iterator[PostgresTenantRepository]:
    """A repository on a one-connection pool, closed when the command ends."""
    with _pool(url) as pool:
        # One statement per connection and maybe a transaction-pooling proxy in
        # between: preparing would cost a round trip and could fail there.
        yield PostgresTenantRepository(pool, cipher=cipher, prepare=False)


@contextmanager
def _pool(url: str) -> Iterator[ConnectionPool]:
    """A one-connection pool, closed when the command ends."""
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        # The driver's message may quote the string, password included: keep it out.
        raise InvalidInput(
            "--database-url", "is not a PostgreSQL connection string or URL"
        ) from exc
    failures = _ConnectFailures()
    pool_log = logging.getLogger("psycopg.pool")
    pool_log.addFilter(failures)
    try:
        with create_pool(url, min_size=1, max_size=1) as pool:
            yield pool
    except StoreUnavailable as exc:
        last = failures.last
        if last is None or not isinstance(exc.__cause__, PoolTimeout):
            raise
        # libpq's messages name the host and port, never the password.
        reason = str(last).strip().splitlines()[0] if str(last).strip() else ""
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL: {reason or type(last).__name__}"
        ) from last
    finally:
        pool_log.removeFilter(failures)


def _cipher(args: argparse.Namespace) -> KeyCipher | None:
    """The ring from --cipher-keys-file, else from the environment, else None."""
    path: str | None = args.cipher_keys_file
    if path is None:
        source = CIPHER_KEYS_ENV
        ring = os.environ.get(CIPHER_KEYS_ENV)
        if not ring:
            return None
    else:
        source = "--cipher-keys-file"
        try:
            ring = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InvalidInput(source, f"cannot read {path!r}: {reason}") from None
        except UnicodeDecodeError:
            raise InvalidInput(source, f"{path!r} is not UTF-8 text") from None
        if not ring:
            raise InvalidInput(source, f"{path!r} is empty")
    try:
        return KeyCipher.from_env(ring)
    except InvalidInput as exc:
        raise InvalidInput(source, exc.rule) from None


def _not_found(tenant_id: str) -> int:
    print(f"tenantstore: error: no tenant {tenant_id}", file=sys.stderr)
    return 1


def _usage_error(message: str) -> int:
    print(f"tenantstore: error: {message}", file=sys.stderr)
    return 2


def _printable(text: str) -> str:
    """`text` safe for a terminal: control and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    """A tenant as JSON-ready values: never its key hash; Decimal as a string."""
    return {
        "id": tenant.id,
        "name": tenant.name,
        "enabled": tenant.enabled,
        "budget_usd": str(tenant.budget_usd),
        "rate_limit_rpm": tenant.rate_limit_rpm,
        "allowed_models": list(tenant.allowed_models),
        "default_provider": tenant.default_provider,
        "fallback_providers": list(tenant.fallback_providers),
        "created_at": _iso(tenant.created_at),
        "updated_at": _iso(tenant.updated_at),
    }


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _key_note(cipher: KeyCipher | None) -> str:
    if cipher is None:
        return (
            "(shown once: only the key's hash is stored, so it cannot be shown "
            "again; store it now)"
        )
    return (
        "(shown once: stored encrypted under cipher key "
        f"{cipher.primary_key_id!r}; `tenantstore tenant reveal-key` can decrypt it)"
    )


def _tenant_create(args: argparse.Namespace, url: str) -> int:
    cipher = _cipher(args)
    fields: dict[str, Any] = {
        "name": args.name,
        "allowed_models": tuple(args.model),
        "fallback_providers": tuple(args.fallback),
        "default_provider": args.default_provider,
        "enabled": not args.disabled,
    }
    if args.id is not None:
        fields["id"] = args.id
    if args.rate_limit is not None:
        fields["rate_limit_rpm"] = args.rate_limit
    if args.budget is not None:
        try:
            fields["budget_usd"] = Decimal(args.budget)
        except InvalidOperation:
            return _usage_error("budget_usd: is not a number (--budget)")
    api_key = generate_api_key()
    try:
        tenant = Tenant(api_key_hash=hash_api_key(api_key), **fields)
        with _tenants(url, cipher) as tenants:
            created = tenants.create(tenant, api_key=api_key)
    except InvalidInput as exc:
        option = _OPTION_OF_FIELD.get(exc.field.partition("[")[0])
        return _usage_error(f"{exc} ({option})" if option else str(exc))
    if args.json:
        _print_json({"id": created.id, "api_key": api_key, **_tenant_json(created)})
        return 0
    print(f"created tenant {created.id} ({_printable(created.name)})")
    print(f"api key: {api_key}")
    print(_key_note(cipher))
    return 0


def _tenant_list(args: argparse.Namespace, url: str) -> int:
    with _tenants(url) as tenants:
        found = tenants.list()
    if args.json:
        _print_json([_tenant_json(t) for t in found])
        return 0
    if not found:
        print("no tenants")
        return 0
    header = ("ID", "NAME", "ENABLED", "BUDGET_USD", "RPM", "CREATED_AT")
    rows = [header]
    for t in found:
        name = _printable(t.name)
        if len(name) > _NAME_WIDTH:
            name = name[: _NAME_WIDTH - 1] + "…"
        created = t.created_at.isoformat(timespec="seconds") if t.created_at else ""
        rows.append(
            (
                t.id,
                name,
                "yes" if t.enabled else "no",
                str(t.budget_usd),
                str(t.rate_limit_rpm),
                created,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4}  # numbers align right
    for row in rows:
        cells = (
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells).rstrip())
    return 0


def _tenant_show(args: argparse.Namespace, url: str) -> int:
    try:
        with _tenants(url) as tenants:
            tenant = tenants.get_by_id(args.id)
    except TenantNotFound:
        return _not_found(args.id)
    if args.json:
        _print_json(_tenant_json(tenant))
        return 0

    def listed(items: tuple[str, ...]) -> str:
        return ", ".join(_printable(i) for i in items) or "(none)"

    provider = tenant.default_provider
    lines = {
        "id": tenant.id,
        "name": _printable(tenant.name),
        "enabled": "yes" if tenant.enabled else "no",
        "budget_usd": str(tenant.budget_usd),
        "rate_limit_rpm": str(tenant.rate_limit_rpm),
        "allowed_models": listed(tenant.allowed_models),
        "default_provider": "(none)" if provider is None else _printable(provider),
        "fallback_providers": listed(tenant.fallback_providers),
        "created_at": _iso(tenant.created_at) or "",
        "updated_at": _iso(tenant.updated_at) or "",
    }
    width = max(len(label) for label in lines) + 1
    for label, value in lines.items():
        print(f"{label + ':':<{width}} {value}")
    return 0


def _set_enabled(args: argparse.Namespace, url: str, enabled: bool) -> int:
    word = "enabled" if enabled else "disabled"
    try:
        with _tenants(url) as tenants:
            if tenants.get_by_id(args.id).enabled == enabled:
                print(f"tenant {args.id} was already {word}")
                return 0
            # Not `update`: it would validate (and reject) values another writer
            # left in the row, and a read-modify-write could lose a race.
            tenants.set_enabled(args.id, enabled)
    except TenantNotFound:
        return _not_found(args.id)
    print(f"tenant {args.id} {word}")
    return 0


def _tenant_disable(args: argparse.Namespace, url: str) -> int:
    return _set_enabled(args, url, enabled=False)


def _tenant_enable(args: argparse.Namespace, url: str) -> int:
    return _set_enabled(args, url, enabled=True)


def _tenant_delete(args: argparse.Namespace, url: str) -> int:
    if not args.yes:
        return _usage_error(
            f"deleting tenant {args.id} also deletes its usage records and cannot "
            "be undone: pass --yes to confirm",
        )
    try:
        with _tenants(url) as tenants:
            tenants.delete(args.id)
    except TenantNotFound:
        return _not_found(args.id)
    print(f"deleted tenant {args.id} and its usage records")
    return 0


def _tenant_rotate_key(args: argparse.Namespace, url: str) -> int:
    cipher = _cipher(args)
    api_key = generate_api_key()
    try:
        with _tenants(url, cipher) as tenants:
            tenant = tenants.get_by_id(args.id)
            # Passing the key replaces the stored encryption (or clears it when
            # there is no cipher): an old ciphertext never outlives its key.
            tenants.update(
                dataclasses.replace(tenant, api_key_hash=hash_api_key(api_key)),
                api_key=api_key,
            )
    except TenantNotFound:
        return _not_found(args.id)
    if args.json:
        _print_json({"id": args.id, "api_key": api_key})
        return 0
    print(f"rotated the key of tenant {args.id}; the previous key no longer works")
    print(f"new api key: {api_key}")
    print(_key_note(cipher))
    return 0


def _tenant_reveal_key(args: argparse.Namespace, url: str) -> int:
    cipher = _cipher(args)
    if cipher is None:
        return _usage_error(
            "revealing a key needs the cipher ring it was stored with: "
            f"set {CIPHER_KEYS_ENV} or pass --cipher-keys-file PATH",
        )
    try:
        with _pool(url) as pool:
            tenants = PostgresTenantRepository(pool, cipher=cipher, prepare=False)
            api_key = tenants.reveal_api_key(args.id)
            stored_copy = api_key is None and _has_stored_copy(pool, args.id)
    except TenantNotFound:
        return _not_found(args.id)
    if stored_copy:
        why = (
            "its stored copy belongs to an older key (the key was replaced without "
            "it, e.g. by the Go service), and the old key no longer authenticates"
        )
    elif api_key is None:
        why = "it has no stored key (it was set without a cipher ring)"
    else:
        print(api_key)
        return 0
    print(
        f"tenantstore: error: cannot reveal the key of tenant {args.id}: {why}; "
        "use rotate-key to issue a new one",
        file=sys.stderr,
    )
    return 1


def _has_stored_copy(pool: ConnectionPool, tenant_id: str) -> bool:
    """Whether the row holds an encrypted key at all (told apart for the message)."""
    try:
        with pool.connection() as conn:
            row = conn.execute(
                _sql.SELECT_ENCRYPTED_KEY, {"id": tenant_id}, prepare=False
            ).fetchone()
    except psycopg.Error as exc:
        raise translate_error(exc) from exc
    return row is not None and row[0] is not None
