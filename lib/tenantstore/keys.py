"""API keys: generating them, checking their shape, hashing them for lookup.

A generated key is ``tsk_`` + 43 base62 characters (256 random bits) + a 6-character
base62 CRC-32 of the rest. A mistyped or forged key in this format fails the checksum
and is rejected before it costs a hash, a cache slot or a query; the prefix makes a
leaked key easy to scan for. Keys in other formats (imported, or issued by the Go
service) are not checked here and authenticate by their hash alone.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from typing import Final

from .errors import InvalidInput
from .validation import utf8

__all__ = [
    "KEY_PREFIX",
    "generate_api_key",
    "hash_api_key",
    "is_plausible_api_key",
    "lookup_hash",
]

KEY_PREFIX: Final = "tsk_"
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN: Final = 43  # 62**43 > 2**256
_CHECK_LEN: Final = 6  # 62**6 > 2**32
KEY_LENGTH: Final = len(KEY_PREFIX) + _BODY_LEN + _CHECK_LEN
_sha256 = hashlib.sha256
_crc32 = zlib.crc32
_SHAPE = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}")
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


def _checksum(prefix_and_body: str) -> str:
    n = _crc32(prefix_and_body.encode("ascii"))  # < 2**32 < 62**6
    return _PAIRS[n // _PAIRS_SQUARED] + _PAIRS[n // 3844 % 3844] + _PAIRS[n % 3844]


def generate_api_key() -> str:
    """A new API key: ``tsk_`` + 256 random bits in base62 + a 6-character checksum.

    Show it to its owner once and store only `hash_api_key(key)` (and, optionally,
    its `KeyCipher` encryption).
    """
    body = _base62(secrets.randbits(256), _BODY_LEN)
    head = KEY_PREFIX + body
    return head + _checksum(head)


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
