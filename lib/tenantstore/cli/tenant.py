"""``tenantstore tenant ...``: create, inspect, enable, disable, delete tenants and
rotate, revoke or reveal their keys, through a `PostgresTenantRepository` on the
command's one connection. The optional `KeyCipher` ring, a secret, is read only from
``$TENANTSTORE_CIPHER_KEYS`` or the file ``--cipher-keys-file PATH``. An API key is
printed only by ``create``, ``rotate-key`` and ``reveal-key``; a key hash never is.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import psycopg

from .. import _sql
from .._cipher import KeyCipher
from .._keys import generate_api_key, hash_api_key
from .._models import Tenant
from .._pgerrors import translate_error
from .._sync.postgres import PostgresTenantRepository
from ..errors import InvalidInput, TenantNotFound
from ._connection import actor, as_pool, connect
from ._format import iso, print_json, print_table, printable, shorten
from ._options import uuid_arg

__all__ = ["CIPHER_KEYS_ENV", "add_parser"]

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


_DURATION: Final = re.compile(r"(\d{1,9})([smhd])")
_UNIT: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(value: str) -> timedelta:
    """An argparse type: `30s`, `15m`, `24h`, `90d` (or `0`)."""
    if value == "0":
        return timedelta(0)
    match = _DURATION.fullmatch(value)
    if match is None:
        raise argparse.ArgumentTypeError("must be a duration such as 24h or 90d")
    try:
        return timedelta(**{_UNIT[match[2]]: int(match[1])})
    except OverflowError:
        raise argparse.ArgumentTypeError("is too long") from None


def _after(duration: timedelta | None) -> datetime | None:
    """When `duration` from now ends (None: never)."""
    if duration is None:
        return None
    try:
        return datetime.now(UTC) + duration
    except OverflowError:
        raise InvalidInput("--expires-in", "is too long") from None


def add_parser(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
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
    one.add_argument("id", type=uuid_arg, metavar="ID", help="the tenant's id")

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
        "--id", type=uuid_arg, metavar="UUID", help="its id (default: a new one)"
    )
    create.add_argument(
        "--expires-in",
        type=_duration,
        metavar="DURATION",
        help="the key stops authenticating after this long (e.g. 90d; default: never)",
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
    rotate.add_argument(
        "--grace",
        type=_duration,
        default=timedelta(0),
        metavar="DURATION",
        help="the old key keeps authenticating this long (e.g. 24h; default 0: "
        "it stops at once)",
    )
    rotate.add_argument(
        "--expires-in",
        type=_duration,
        metavar="DURATION",
        help="the new key stops authenticating after this long (e.g. 90d; "
        "default: never)",
    )
    rotate.set_defaults(handler=_tenant_rotate_key)

    revoke = actions.add_parser(
        "revoke-previous-key",
        parents=[*common, one],
        help="end the grace period of the key a rotation replaced, now",
    )
    revoke.set_defaults(handler=_tenant_revoke_previous_key)

    reveal = actions.add_parser(
        "reveal-key",
        parents=[*common, ciphered, one],
        help="decrypt and print the tenant's stored API key (needs a cipher ring)",
    )
    reveal.set_defaults(handler=_tenant_reveal_key)


@contextmanager
def _tenants(
    args: argparse.Namespace, url: str, cipher: KeyCipher | None = None
) -> Iterator[PostgresTenantRepository]:
    """A repository on the command's one connection, closed when it ends."""
    with connect(url) as conn:
        # One statement per connection and maybe a transaction-pooling proxy in
        # between: preparing would cost a round trip and could fail there.
        yield PostgresTenantRepository(
            as_pool(conn), cipher=cipher, prepare=False, actor=actor(args.actor)
        )


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
        "created_at": iso(tenant.created_at),
        "updated_at": iso(tenant.updated_at),
        # Named without "api_key": no output but create's and rotate's carries one.
        "key_prefix": tenant.api_key_prefix,
        "key_expires_at": iso(tenant.api_key_expires_at),
        "previous_key_until": iso(_grace_end(tenant)),
    }


def _grace_end(tenant: Tenant) -> datetime | None:
    """When the previous key stops authenticating (None: there is none)."""
    if tenant.previous_api_key_hash is None:
        return None
    return tenant.previous_api_key_expires_at


def _when(moment: datetime | None, never: str = "never") -> str:
    return never if moment is None else moment.isoformat(timespec="seconds")


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
        fields["api_key_expires_at"] = _after(args.expires_in)
        tenant = Tenant(api_key_hash=hash_api_key(api_key), **fields)
        with _tenants(args, url, cipher) as tenants:
            created = tenants.create(tenant, api_key=api_key)
    except InvalidInput as exc:
        option = _OPTION_OF_FIELD.get(exc.field.partition("[")[0])
        return _usage_error(f"{exc} ({option})" if option else str(exc))
    if args.json:
        print_json({"id": created.id, "api_key": api_key, **_tenant_json(created)})
        return 0
    print(f"created tenant {created.id} ({printable(created.name)})")
    print(f"api key: {api_key}")
    if created.api_key_expires_at is not None:
        print(f"it expires at {_when(created.api_key_expires_at)}")
    print(_key_note(cipher))
    return 0


def _tenant_list(args: argparse.Namespace, url: str) -> int:
    with _tenants(args, url) as tenants:
        found = tenants.list()
    if args.json:
        print_json([_tenant_json(t) for t in found])
        return 0
    if not found:
        print("no tenants")
        return 0
    rows = [
        (
            t.id,
            shorten(t.name),
            "yes" if t.enabled else "no",
            str(t.budget_usd),
            str(t.rate_limit_rpm),
            printable(t.api_key_prefix or ""),
            _when(t.api_key_expires_at, ""),
            _when(_grace_end(t), ""),
            t.created_at.isoformat(timespec="seconds") if t.created_at else "",
        )
        for t in found
    ]
    header = (
        *("ID", "NAME", "ENABLED", "BUDGET_USD", "RPM", "KEY"),
        *("KEY_EXPIRES_AT", "PREVIOUS_KEY_UNTIL", "CREATED_AT"),
    )
    print_table(header, rows, right=frozenset({3, 4}))  # numbers align right
    return 0


def _tenant_show(args: argparse.Namespace, url: str) -> int:
    try:
        with _tenants(args, url) as tenants:
            tenant = tenants.get_by_id(args.id)
    except TenantNotFound:
        return _not_found(args.id)
    if args.json:
        print_json(_tenant_json(tenant))
        return 0

    def listed(items: tuple[str, ...]) -> str:
        return ", ".join(printable(i) for i in items) or "(none)"

    provider = tenant.default_provider
    lines = {
        "id": tenant.id,
        "name": printable(tenant.name),
        "enabled": "yes" if tenant.enabled else "no",
        "budget_usd": str(tenant.budget_usd),
        "rate_limit_rpm": str(tenant.rate_limit_rpm),
        "allowed_models": listed(tenant.allowed_models),
        "default_provider": "(none)" if provider is None else printable(provider),
        "fallback_providers": listed(tenant.fallback_providers),
        "key_prefix": printable(tenant.api_key_prefix or "(unknown)"),
        "key_expires_at": _when(tenant.api_key_expires_at),
        "previous_key_until": _when(_grace_end(tenant), "(no previous key)"),
        "created_at": iso(tenant.created_at) or "",
        "updated_at": iso(tenant.updated_at) or "",
    }
    width = max(len(label) for label in lines) + 1
    for label, value in lines.items():
        print(f"{label + ':':<{width}} {value}")
    return 0


def _set_enabled(args: argparse.Namespace, url: str, enabled: bool) -> int:
    word = "enabled" if enabled else "disabled"
    try:
        with _tenants(args, url) as tenants:
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
        with _tenants(args, url) as tenants:
            tenants.delete(args.id)
    except TenantNotFound:
        return _not_found(args.id)
    print(f"deleted tenant {args.id} and its usage records")
    return 0


def _tenant_rotate_key(args: argparse.Namespace, url: str) -> int:
    cipher = _cipher(args)
    api_key = generate_api_key()
    try:
        expires_at = _after(args.expires_in)
        with _tenants(args, url, cipher) as tenants:
            # The repository replaces the stored encryption (or clears it when
            # there is no cipher): an old ciphertext never outlives its key.
            rotated = tenants.rotate_api_key(
                args.id, api_key, grace=args.grace, expires_at=expires_at
            )
    except TenantNotFound:
        return _not_found(args.id)
    except InvalidInput as exc:
        return _usage_error(str(exc))
    grace_end = _grace_end(rotated)
    if args.json:
        print_json(
            {
                "id": args.id,
                "api_key": api_key,
                "key_expires_at": iso(rotated.api_key_expires_at),
                "previous_key_until": iso(grace_end),
            }
        )
        return 0
    if grace_end is None:
        print(f"rotated the key of tenant {args.id}; the previous key no longer works")
    else:
        print(
            f"rotated the key of tenant {args.id}; the previous key works until "
            f"{_when(grace_end)} (`tenant revoke-previous-key` ends it sooner)"
        )
    print(f"new api key: {api_key}")
    if rotated.api_key_expires_at is not None:
        print(f"it expires at {_when(rotated.api_key_expires_at)}")
    print(_key_note(cipher))
    return 0


def _tenant_revoke_previous_key(args: argparse.Namespace, url: str) -> int:
    try:
        with _tenants(args, url) as tenants:
            before = tenants.get_by_id(args.id)
            tenants.revoke_previous_api_key(args.id)
    except TenantNotFound:
        return _not_found(args.id)
    if before.previous_api_key_hash is None:
        print(f"tenant {args.id} has no previous key")
    else:
        print(f"tenant {args.id}: the previous key no longer works")
    return 0


def _tenant_reveal_key(args: argparse.Namespace, url: str) -> int:
    cipher = _cipher(args)
    if cipher is None:
        return _usage_error(
            "revealing a key needs the cipher ring it was stored with: "
            f"set {CIPHER_KEYS_ENV} or pass --cipher-keys-file PATH",
        )
    try:
        with connect(url) as conn:
            tenants = PostgresTenantRepository(
                as_pool(conn), cipher=cipher, prepare=False
            )
            api_key = tenants.reveal_api_key(args.id)
            stored_copy = api_key is None and _has_stored_copy(conn, args.id)
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


def _has_stored_copy(conn: psycopg.Connection[Any], tenant_id: str) -> bool:
    """Whether the row holds an encrypted key at all (told apart for the message)."""
    try:
        row = conn.execute(
            _sql.SELECT_ENCRYPTED_KEY, {"id": tenant_id}, prepare=False
        ).fetchone()
    except psycopg.Error as exc:
        raise translate_error(exc) from exc
    return row is not None and row[0] is not None
