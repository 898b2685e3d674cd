"""API keys: generating them, checking their shape, hashing them for lookup.

A generated key is ``tsk_`` + 43 base62 characters (256 random bits) + a 6-character
base62 CRC-32 of the rest. A mistyped key in this format fails the checksum and is
rejected before it costs a query or a cache slot; the prefix makes a leaked key easy
to scan for. A CRC is public, so a forger computes it too: against forgeries, a
deployment secret given to `generate_api_key(secret=...)` adds a keyed tag (6 base62
characters of an HMAC-SHA256 under the secret, before the checksum: 59 characters in
all), and a cache given the same secret (`key_secret=`) refuses every key the secret
did not tag without asking the store (`is_tagged_api_key`). Keys in other formats
(imported, or issued by the Go service) are not checked here and authenticate by
their hash alone.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from ._models import Tenant
from ._validation import is_key_hash, utf8
from .errors import InvalidInput

__all__ = [
    "KEY_PREFIX",
    "generate_api_key",
    "hash_api_key",
    "is_plausible_api_key",
    "is_tagged_api_key",
    "key_expiry",
    "key_matches_hash",
    "key_secrets",
    "lookup_hash",
]

KEY_PREFIX: Final = "tsk_"
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN: Final = 43  # 62**43 > 2**256
_CHECK_LEN: Final = 6  # 62**6 > 2**32
_TAG_LEN: Final = 6  # 32 bits of an HMAC: a forger's chance per key is 2**-32
KEY_LENGTH: Final = len(KEY_PREFIX) + _BODY_LEN + _CHECK_LEN
TAGGED_KEY_LENGTH: Final = KEY_LENGTH + _TAG_LEN
_MIN_SECRET: Final = 16  # bytes
_sha256 = hashlib.sha256
_crc32 = zlib.crc32
_hmac = hmac.digest
_SHAPE = re.compile(
    rf"{KEY_PREFIX}[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}"
    rf"(?:[0-9A-Za-z]{{{_TAG_LEN}}})?"
)
_shape_match = _SHAPE.fullmatch
# Every two-digit base62 string, so a checksum encodes in three lookups.
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_PAIRS_SQUARED: Final = 62**4


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _six(n: int) -> str:
    # n < 2**32 < 62**6: six base62 digits in three lookups.
    return _PAIRS[n // _PAIRS_SQUARED] + _PAIRS[n // 3844 % 3844] + _PAIRS[n % 3844]


def _checksum(prefix_and_body: str) -> str:
    return _six(_crc32(prefix_and_body.encode("ascii")))


def _tag(secret: bytes, prefix_and_body: str) -> str:
    digest = _hmac(secret, prefix_and_body.encode("ascii"), "sha256")
    return _six(int.from_bytes(digest[:4], "big"))


def key_secrets(value: bytes | Sequence[bytes]) -> tuple[bytes, ...]:
    """Checked deployment secret(s) for keyed tags: one, or several while the
    secret rotates (keys tagged by any of them pass). `InvalidInput` unless each
    is bytes of at least 16 bytes (use `secrets.token_bytes(32)`)."""
    ring = (value,) if isinstance(value, bytes | bytearray) else tuple(value)
    if not ring:
        raise InvalidInput("key_secret", "must name at least one secret")
    for secret in ring:
        if not isinstance(secret, bytes | bytearray) or len(secret) < _MIN_SECRET:
            raise InvalidInput(
                "key_secret", f"must be bytes of at least {_MIN_SECRET} bytes"
            )
    return tuple(bytes(secret) for secret in ring)


def generate_api_key(secret: bytes | None = None) -> str:
    """A new API key: ``tsk_`` + 256 random bits in base62 + a 6-character checksum.

    With `secret` (the deployment's, at least 16 bytes), a 6-character keyed tag
    comes before the checksum, so that a cache given the secret (`key_secret=`)
    can refuse forged keys without a query. Both kinds pass `is_plausible_api_key`
    and authenticate through every repository. Show the key to its owner once and
    store only `hash_api_key(key)` (and, optionally, its `KeyCipher` encryption).
    """
    body = _base62(secrets.randbits(256), _BODY_LEN)
    head = KEY_PREFIX + body
    if secret is not None:
        head += _tag(key_secrets(secret)[0], head)
    return head + _checksum(head)


def is_tagged_api_key(api_key: object, ring: Sequence[bytes]) -> bool:
    """True for a key of our format whose keyed tag one secret of `ring` made
    (and whose checksum holds); never raises. Constant-time in the tag."""
    if not isinstance(api_key, str):
        return False
    api_key = str.__str__(api_key)
    if (
        len(api_key) != TAGGED_KEY_LENGTH
        or not api_key.startswith(KEY_PREFIX)
        or not is_plausible_api_key(api_key)  # our shape and checksum
    ):
        return False
    body_end = len(KEY_PREFIX) + _BODY_LEN
    head, tag = api_key[:body_end], api_key[body_end : body_end + _TAG_LEN]
    return any(hmac.compare_digest(_tag(secret, head), tag) for secret in ring)


def hash_api_key(api_key: str) -> str:
    """SHA-256 of the key's UTF-8 bytes, as 64 lowercase hex digits.

    This is what the stores index and what lookups compare. Raises `InvalidInput`
    for a non-str or a str that is not valid Unicode (lone surrogates). A `str`
    subclass hashes as the equal `str` (its own methods are not consulted).
    """
    if not isinstance(api_key, str):
        raise InvalidInput("api_key", f"must be a str, not {type(api_key).__name__}")
    return _sha256(utf8("api_key", str.__str__(api_key))).hexdigest()


def is_plausible_api_key(api_key: object) -> bool:
    """False only for what cannot be any tenant's key; costs no hash.

    A key with our prefix must have our length, alphabet and checksum. Any other
    non-empty str may be a key of another format and is plausible. A `str`
    subclass is judged by its characters, as the equal `str` would be.
    """
    if not isinstance(api_key, str):
        return False
    api_key = str.__str__(api_key)  # the characters, whatever the subclass says
    if not api_key:
        return False
    if not api_key.startswith(KEY_PREFIX):
        return True
    if _shape_match(api_key) is None:
        return False
    return _checksum(api_key[:-_CHECK_LEN]) == api_key[-_CHECK_LEN:]


def lookup_hash(api_key: object) -> str | None:
    """The hash to look a presented key up by, or None when no tenant can own it.

    None for a non-str, an empty str, lone surrogates, or a key in our format whose
    checksum fails; never raises. This is the miss path: a cache hit hashes only.
    """
    if not is_plausible_api_key(api_key):
        return None
    assert isinstance(api_key, str)
    try:
        data = str.encode(api_key, "utf-8")  # str's own: a subclass by its characters
    except UnicodeEncodeError:
        return None
    return _sha256(data).hexdigest()


def key_matches_hash(api_key: str, api_key_hash: object) -> bool:
    """True when `api_key` hashes to `api_key_hash` (a stored hash of any shape).

    Compared in constant time. A stored value that is not 64 lowercase hex digits
    (a writer around our validation) is no key's hash: False.
    """
    if not is_key_hash(api_key_hash):
        return False
    assert isinstance(api_key_hash, str)
    return hmac.compare_digest(hash_api_key(api_key), api_key_hash)


def key_expiry(tenant: Tenant, key_hash: str) -> datetime | bool | None:
    """When `key_hash` stops authenticating `tenant` (by every store's rule): None
    for never, False when it is neither its current nor its previous key's hash."""
    previous = tenant.previous_api_key_expires_at
    if tenant.previous_api_key_hash != key_hash:
        previous = None
    if tenant.api_key_hash != key_hash:
        return False if previous is None else previous
    current = tenant.api_key_expires_at
    if current is None:
        return None
    return current if previous is None else max(current, previous)
