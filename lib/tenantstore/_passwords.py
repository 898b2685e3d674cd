"""Admin passwords: bcrypt hashes the Go service and tenantstore both verify.

`hash_password` makes ``$2a$10$...``, exactly what Go's
``bcrypt.GenerateFromPassword(password, bcrypt.DefaultCost)`` makes; `verify_password`
accepts any bcrypt hash either side wrote (``$2a$``, ``$2b$``, ``$2y$``, any cost).
A password is refused beyond 72 bytes of UTF-8, where bcrypt would silently ignore
the rest, and with NUL characters. Nothing here stores anything; no password or hash
is ever part of a message.
"""

from __future__ import annotations

import secrets
from typing import Final

import bcrypt

from .errors import InvalidInput

__all__ = ["BCRYPT_COST", "PASSWORD_MAX_BYTES", "hash_password", "verify_password"]

BCRYPT_COST: Final = 10  # Go's bcrypt.DefaultCost
PASSWORD_MAX_BYTES: Final = 72
# Go's bcrypt writes the "2a" prefix; every bcrypt reads "2a" and "2b" alike.
_PREFIX: Final = b"2a"

# The cost new hashes get. Only tests lower it (bcrypt at cost 10 takes about 50
# ms, which a state machine of thousands of steps cannot afford); Go verifies any.
_cost = BCRYPT_COST

# The hash an unknown user's password is checked against, so that refusing an
# unknown user costs the same bcrypt work as refusing a wrong password. Its
# password is random and was thrown away; the cost is the one we write.
_DUMMIES: dict[int, bytes] = {
    BCRYPT_COST: b"$2a$10$0y9Ehif18PEKVf73bsj3guPpJy6wO.p7HnH01odezIgJJ1NVI0Ksi"
}


def _dummy() -> bytes:
    dummy = _DUMMIES.get(_cost)
    if dummy is None:
        dummy = _DUMMIES[_cost] = bcrypt.hashpw(
            secrets.token_bytes(32).hex().encode(), bcrypt.gensalt(_cost, _PREFIX)
        )
    return dummy


def password_bytes(password: object) -> bytes:
    """The UTF-8 bytes of a password to store; `InvalidInput("password")` when it
    is not a str, empty, holds NUL or lone surrogates, or exceeds 72 bytes."""
    if not isinstance(password, str):
        raise InvalidInput("password", f"must be a str, not {type(password).__name__}")
    if not password:
        raise InvalidInput("password", "must not be empty")
    if "\x00" in password:
        raise InvalidInput("password", "must not contain NUL characters")
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:
        encoded = None
    if encoded is None:  # raised outside the handler: no password in __context__
        raise InvalidInput("password", "must be valid Unicode (no lone surrogates)")
    if len(encoded) > PASSWORD_MAX_BYTES:
        raise InvalidInput(
            "password",
            f"must be at most {PASSWORD_MAX_BYTES} bytes of UTF-8 (bcrypt ignores "
            "the rest)",
        )
    return encoded


def hash_password(password: str) -> str:
    """A new bcrypt hash of `password` (``$2a$10$`` + salt + digest), for the
    `admin_users.password_hash` column. Raises `InvalidInput` as `password_bytes`."""
    encoded = password_bytes(password)
    return bcrypt.hashpw(encoded, bcrypt.gensalt(_cost, _PREFIX)).decode("ascii")


def verify_password(password: object, password_hash: object) -> bool:
    """Whether `password` matches `password_hash`; False, never an error, for
    anything that cannot match (not a str, too long, a malformed hash) — always
    after one bcrypt verification, against the dummy hash when there is no usable
    one, so a refusal takes the time of any other."""
    try:
        candidate = password.encode("utf-8") if isinstance(password, str) else None
    except UnicodeEncodeError:
        candidate = None
    stored = (
        password_hash.encode("ascii", "replace")
        if isinstance(password_hash, str)
        else None
    )
    usable = candidate is not None and len(candidate) <= PASSWORD_MAX_BYTES
    if stored is not None and usable:
        assert candidate is not None
        try:
            return bcrypt.checkpw(candidate, stored)
        except ValueError:
            pass  # a malformed hash (another writer's): refuse like the rest
    bcrypt.checkpw((candidate or b"")[:PASSWORD_MAX_BYTES], _dummy())
    return False
