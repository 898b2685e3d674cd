"""`KeyCipher`: AES-256-GCM encryption of API keys for display and rotation.

A cipher holds a ring of 32-byte keys, each under a short id, and encrypts with the
primary one. A message is ``b"\\x01" + len(key_id) + key_id + nonce(12) + ciphertext``,
with a fresh random 96-bit nonce per message and the tenant id as associated data, so
a ciphertext moved to another tenant's row fails to decrypt. Old ciphertexts keep
decrypting while their key stays in the ring; `reencrypt` moves them to the primary.
There is no derivation from passphrases: keys are random bytes (`generate_key`), and
a key that plainly is not (all zeros, one byte repeated, a short pattern: fewer than
`MIN_DISTINCT_BYTES` distinct byte values among its 32) is refused.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CipherError, InvalidInput
from .keys import hash_api_key
from .validation import utf8

__all__ = ["MIN_DISTINCT_BYTES", "KeyCipher", "encrypted_key_for_write"]

_VERSION: Final = 1
_NONCE_LEN: Final = 12
_AAD_PREFIX: Final = b"tenantstore/api_key/v1:"
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

    def encrypt(self, api_key: str, tenant_id: str) -> bytes:
        """The key encrypted under the primary key, bound to `tenant_id`."""
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._aeads[self._primary].encrypt(
            nonce,
            _utf8(api_key, "api_key"),
            _AAD_PREFIX + _utf8(tenant_id, "tenant_id"),
        )
        return bytes((_VERSION, len(self._primary))) + self._primary + nonce + sealed

    def decrypt(self, message: bytes, tenant_id: str) -> str:
        """The plaintext key; `CipherError` if `message` is not this tenant's."""
        key_id, nonce, sealed = self._split(message)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise CipherError("the encryption key of this message is not in the ring")
        try:
            plain = aead.decrypt(
                nonce, sealed, _AAD_PREFIX + _utf8(tenant_id, "tenant_id")
            )
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

    def reencrypt(self, message: bytes, tenant_id: str) -> bytes:
        """The same key encrypted under the primary key (for master-key rotation)."""
        return self.encrypt(self.decrypt(message, tenant_id), tenant_id)

    @staticmethod
    def _split(message: bytes) -> tuple[bytes, bytes, bytes]:
        if not isinstance(message, bytes | bytearray | memoryview):
            raise CipherError("the message must be bytes")
        message = bytes(message)
        if len(message) < 2 or message[0] != _VERSION:
            raise CipherError("the message is not a tenantstore KeyCipher message")
        end = 2 + message[1]
        if len(message) < end + _NONCE_LEN + 16:
            raise CipherError("the message is truncated")
        return (
            message[2:end],
            message[end : end + _NONCE_LEN],
            message[end + _NONCE_LEN :],
        )

    def __repr__(self) -> str:
        ids = ", ".join(k.decode() for k in self._aeads)
        return f"KeyCipher(key_ids=[{ids}], primary={self.primary_key_id!r})"


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
    return None if cipher is None else cipher.encrypt(api_key, tenant_id)
