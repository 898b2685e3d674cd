"""`KeyCipher`: AES-256-GCM encryption of API keys for display and rotation.

A cipher holds a ring of 32-byte keys, each under a short id, and encrypts with the
primary one. A message is ``b"\\x02" + len(key_id) + key_id + hash(32) + nonce(12) +
ciphertext``, with a fresh random 96-bit nonce per message and the tenant id and the
key's hash (also carried in clear: it is the row's `api_key_hash`) as associated
data, so a ciphertext moved to another tenant's row, or left behind by a writer that
re-keyed the row without it, is recognised as such and never revealed. Messages of
version 1 (``b"\\x01"``, bound to the tenant id only, written before key rotation
existed) keep decrypting, as old ciphertexts do while their key stays in the ring;
`reencrypt` moves them to the primary key (and, given the hash, to version 2).
There is no derivation from passphrases: keys are random bytes (`generate_key`), and
a key that plainly is not (all zeros, one byte repeated, a short pattern: fewer than
`MIN_DISTINCT_BYTES` distinct byte values among its 32) is refused.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._keys import hash_api_key
from ._validation import (
    grace_period,
    is_canonical_id,
    key_prefix,
    optional_datetime,
    utf8,
)
from .errors import CipherError, InvalidInput

__all__ = [
    "MIN_DISTINCT_BYTES",
    "KeyCipher",
    "encrypted_key_for_write",
    "rotation_for_write",
]

_VERSION: Final = 1
_VERSION_BOUND: Final = 2  # bound to the key's hash as well
_HASH_LEN: Final = 32
_NONCE_LEN: Final = 12
_AAD_PREFIX: Final = b"tenantstore/api_key/v1:"
_AAD_BOUND_PREFIX: Final = b"tenantstore/api_key/v2:"
# 32 random bytes hold about 30 distinct values; fewer than 16 happens with
# probability 3.2e-17 (computed exactly over the 256**32 keys), so a real random
# key never fails this, while a zeroed buffer, a repeated byte or a pattern shorter
# than 16 bytes always does. It cannot tell a weak key that looks random (a
# password's hash, bytes(range(32))): it catches mistakes, not adversaries.
MIN_DISTINCT_BYTES: Final = 16


class KeyCipher:
    """Encrypts API keys with AES-256-GCM under a ring of keys.

    >>> cipher = KeyCipher({"2026-11": KeyCipher.generate_key()})
    >>> blob = cipher.encrypt("tsk_...", tenant_id="5f0c...")
    >>> cipher.decrypt(blob, tenant_id="5f0c...")
    'tsk_...'

    Raises `InvalidInput` for a malformed ring (including a key that is plainly not
    random: see `MIN_DISTINCT_BYTES`) and `CipherError` when a message
    cannot be decrypted (tampered, moved to another tenant, or its key is not in
    the ring). Neither message includes key material.
    """

    __module__ = "tenantstore"
    __slots__ = ("_aeads", "_primary")

    def __init__(
        self, keys: Mapping[str, bytes], *, primary: str | None = None
    ) -> None:
        if not keys:
            raise InvalidInput("keys", "the ring needs at least one key")
        aeads: dict[bytes, AESGCM] = {}
        for position, (key_id, key) in enumerate(keys.items()):
            encoded = _utf8(key_id, "keys") if isinstance(key_id, str) else b""
            if not 0 < len(encoded) < 256:
                raise InvalidInput("keys", "key ids are non-empty str of < 256 bytes")
            if not isinstance(key, bytes | bytearray) or len(key) != 32:
                raise InvalidInput(
                    "keys", f"the key at position {position} must be exactly 32 bytes"
                )
            if len(set(key)) < MIN_DISTINCT_BYTES:
                # The message says nothing about the bytes (not even how many
                # distinct values there are): it goes to logs.
                raise InvalidInput(
                    "keys",
                    f"the key at position {position} is not random (fewer than "
                    f"{MIN_DISTINCT_BYTES} distinct byte values): make keys with "
                    "KeyCipher.generate_key()",
                )
            aeads[encoded] = AESGCM(bytes(key))
        if primary is None:
            primary = next(iter(keys))
        if primary not in keys:
            raise InvalidInput("primary", "must be one of the ring's key ids")
        self._aeads = aeads
        self._primary = primary.encode()

    @staticmethod
    def generate_key() -> bytes:
        """32 random bytes from the OS, for a new ring entry."""
        return os.urandom(32)

    @classmethod
    def from_env(cls, value: str) -> KeyCipher:
        """A ring from ``"id1:base64key1,id2:base64key2"``; the first is primary."""
        keys: dict[str, bytes] = {}
        # Messages give positions, never ids or keys: a swapped "key:id" pair
        # would otherwise print key material.
        for position, item in enumerate(value.split(",")):
            key_id, sep, encoded = item.strip().partition(":")
            if not sep:
                raise InvalidInput("keys", "expected id:base64key entries")
            if key_id in keys:
                raise InvalidInput(
                    "keys", f"the id at position {position} appears twice"
                )
            try:
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise InvalidInput(
                    "keys", f"the key at position {position} is not base64"
                ) from None
        return cls(keys)

    @property
    def primary_key_id(self) -> str:
        return self._primary.decode()

    def encrypt(
        self, api_key: str, tenant_id: str, api_key_hash: str | None = None
    ) -> bytes:
        """The key encrypted under the primary key, bound to `tenant_id` and, when
        given (every write of this library gives it), to `api_key_hash`."""
        nonce = os.urandom(_NONCE_LEN)
        plain = _utf8(api_key, "api_key")
        key_id = bytes((len(self._primary),)) + self._primary
        if api_key_hash is None:
            sealed = self._aeads[self._primary].encrypt(
                nonce, plain, _AAD_PREFIX + _utf8(tenant_id, "tenant_id")
            )
            return bytes((_VERSION,)) + key_id + nonce + sealed
        digest = _hash_bytes(api_key_hash)
        sealed = self._aeads[self._primary].encrypt(
            nonce, plain, _bound_aad(tenant_id, digest)
        )
        return bytes((_VERSION_BOUND,)) + key_id + digest + nonce + sealed

    def decrypt(
        self, message: bytes, tenant_id: str, api_key_hash: str | None = None
    ) -> str:
        """The plaintext key; `CipherError` if `message` is not this tenant's (or,
        with `api_key_hash`, not the encryption of the key of that hash)."""
        key_id, digest, nonce, sealed = self._split(message)
        if digest is None:
            aad = _AAD_PREFIX + _utf8(tenant_id, "tenant_id")
        else:
            if api_key_hash is not None and _hash_bytes(api_key_hash) != digest:
                raise CipherError("the message is the encryption of another key")
            aad = _bound_aad(tenant_id, digest)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise CipherError("the encryption key of this message is not in the ring")
        try:
            plain = aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise CipherError(
                "the message was tampered with or belongs to another tenant"
            ) from None
        return plain.decode("utf-8")

    def key_id_of(self, message: bytes) -> str:
        """The id of the ring key a message was encrypted with."""
        try:
            return self._split(message)[0].decode()
        except UnicodeDecodeError:
            raise CipherError("the message's key id is damaged") from None

    def reencrypt(
        self, message: bytes, tenant_id: str, api_key_hash: str | None = None
    ) -> bytes:
        """The same key encrypted under the primary key (for master-key rotation);
        with `api_key_hash`, bound to it (a version 1 message moves to version 2)."""
        bound = self._split(message)[1]
        if api_key_hash is None and bound is not None:
            api_key_hash = bound.hex()
        return self.encrypt(
            self.decrypt(message, tenant_id, api_key_hash), tenant_id, api_key_hash
        )

    @staticmethod
    def _split(message: bytes) -> tuple[bytes, bytes | None, bytes, bytes]:
        if not isinstance(message, bytes | bytearray | memoryview):
            raise CipherError("the message must be bytes")
        message = bytes(message)
        if len(message) < 2 or message[0] not in (_VERSION, _VERSION_BOUND):
            raise CipherError("the message is not a tenantstore KeyCipher message")
        end = 2 + message[1]
        digest = None
        if message[0] == _VERSION_BOUND:
            digest = message[end : end + _HASH_LEN]
            end += _HASH_LEN
        if len(message) < end + _NONCE_LEN + 16:
            raise CipherError("the message is truncated")
        return (
            message[2 : 2 + message[1]],
            digest,
            message[end : end + _NONCE_LEN],
            message[end + _NONCE_LEN :],
        )

    def __repr__(self) -> str:
        ids = ", ".join(k.decode() for k in self._aeads)
        return f"KeyCipher(key_ids=[{ids}], primary={self.primary_key_id!r})"


def _hash_bytes(api_key_hash: str) -> bytes:
    try:
        digest = bytes.fromhex(api_key_hash)
    except (TypeError, ValueError):
        digest = b""
    if len(digest) != _HASH_LEN:
        raise InvalidInput("api_key_hash", "must be 64 hex digits")
    return digest


def _bound_aad(tenant_id: str, digest: bytes) -> bytes:
    return _AAD_BOUND_PREFIX + _utf8(tenant_id, "tenant_id") + b":" + digest


def _utf8(text: str, field: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(field, "must be a str")
    return utf8(field, text)


def encrypted_key_for_write(
    api_key_hash: str, tenant_id: str, api_key: str | None, cipher: KeyCipher | None
) -> bytes | None:
    """What a write stores as `api_key_encrypted` when given the plaintext key.

    Raises `InvalidInput` when `api_key` does not hash to `api_key_hash`; returns
    None without a key or without a cipher (nothing can be stored then).
    """
    if api_key is None:
        return None
    if hash_api_key(api_key) != api_key_hash:
        raise InvalidInput("api_key", "does not hash to api_key_hash")
    if cipher is None:
        return None
    return cipher.encrypt(api_key, tenant_id, api_key_hash)


def rotation_for_write(
    tenant_id: object,
    api_key: str,
    grace: object,
    expires_at: object,
    cipher: KeyCipher | None,
) -> tuple[str, str | None, bytes | None, timedelta, datetime | None]:
    """A rotation's arguments as every backend stores them: the new key's hash, its
    prefix and, with a cipher (and an id that can be anyone's), its encryption
    bound to the id and the hash; then the grace period and the new expiry.

    Raises `InvalidInput` for a key that cannot be hashed, a grace period that is
    not a non-negative timedelta, or an expiry that is not an aware datetime.
    """
    api_key_hash = hash_api_key(api_key)
    encrypted = None
    if cipher is not None and is_canonical_id(tenant_id):
        assert isinstance(tenant_id, str)
        encrypted = cipher.encrypt(api_key, tenant_id, api_key_hash)
    return (
        api_key_hash,
        key_prefix(api_key),
        encrypted,
        grace_period(grace),
        optional_datetime("expires_at", expires_at),
    )
