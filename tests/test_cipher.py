"""`KeyCipher`: AES-256-GCM under a ring of keys, bound to the tenant id.

Round trips, tampering, moving a ciphertext to another tenant, rotation of the ring,
parsing a ring from the environment, and what never shows in a repr or a message.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantstore import (
    CipherError,
    InMemoryTenantRepository,
    InvalidInput,
    KeyCipher,
    Tenant,
    TenantStoreError,
    generate_api_key,
    hash_api_key,
)
from tenantstore._cipher import MIN_DISTINCT_BYTES, encrypted_key_for_write

# Fixed, recognisable key material, so a leak is easy to search for.
OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
OTHER_KEY = bytes(range(200, 232))
TENANT = "0b6f5c1e-3f3a-4c1e-9a57-2f4b1d6a9c10"
OTHER_TENANT = "7d1e2a44-5b6c-4d7e-8f90-a1b2c3d4e5f6"
PLAIN = "tsk_plaintext-that-must-never-leak"

cipher = KeyCipher({"k1": OLD_KEY})
tenant_ids = st.uuids().map(str)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def flip(message: bytes, bit: int) -> bytes:
    data = bytearray(message)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def leaks(shown: str, *secrets: bytes | str) -> list[str]:
    """Which renderings of `secrets` appear in `shown`."""
    found = []
    for secret in secrets:
        if isinstance(secret, str):
            forms = [secret, secret[4:20]]
        else:
            forms = [secret.hex(), b64(secret), repr(secret), str(list(secret[:8]))]
        found += [form for form in forms if form and form in shown]
    return found


def renderings(error: BaseException) -> Iterator[str]:
    yield str(error)
    yield repr(error)
    yield from map(repr, error.args)
    for linked in (error.__cause__, error.__context__):
        if linked is not None:
            yield from renderings(linked)


# --- round trips --------------------------------------------------------------------


@given(api_key=st.text(), tenant_id=tenant_ids)
def test_round_trip(api_key: str, tenant_id: str) -> None:
    message = cipher.encrypt(api_key, tenant_id)
    assert isinstance(message, bytes)
    assert len(message) == 2 + len(b"k1") + 12 + len(api_key.encode()) + 16
    assert cipher.decrypt(message, tenant_id) == api_key
    assert cipher.key_id_of(message) == "k1"


@pytest.mark.parametrize(
    "api_key", ["", "ключ-ünïcode", "🙂" * 100, "a\x00b", generate_api_key()]
)
def test_round_trip_examples(api_key: str) -> None:
    message = cipher.encrypt(api_key, TENANT)
    assert cipher.decrypt(message, TENANT) == api_key


def test_each_encryption_uses_a_fresh_nonce() -> None:
    messages = {cipher.encrypt(PLAIN, TENANT) for _ in range(100)}
    assert len(messages) == 100
    nonces = {m[4:16] for m in messages}  # after version, id length and "k1"
    assert len(nonces) == 100
    assert all(cipher.decrypt(m, TENANT) == PLAIN for m in messages)


def test_the_message_layout() -> None:
    message = cipher.encrypt(PLAIN, TENANT)
    assert message[0] == 1
    assert message[1] == 2
    assert message[2:4] == b"k1"
    # version, id length, id, 96-bit nonce, ciphertext, 128-bit tag
    assert len(message) == 1 + 1 + 2 + 12 + len(PLAIN) + 16


# --- tampering and moving -----------------------------------------------------------


@given(api_key=st.text(max_size=64), tenant_id=tenant_ids, other=tenant_ids)
def test_another_tenant_cannot_decrypt(
    api_key: str, tenant_id: str, other: str
) -> None:
    message = cipher.encrypt(api_key, tenant_id)
    if other == tenant_id:
        assert cipher.decrypt(message, other) == api_key
        return
    with pytest.raises(CipherError):
        cipher.decrypt(message, other)


def test_moving_a_ciphertext_to_another_row_fails() -> None:
    message = cipher.encrypt(PLAIN, TENANT)
    for other in (OTHER_TENANT, TENANT.upper(), "", TENANT + " "):
        with pytest.raises(CipherError):
            cipher.decrypt(message, other)


@given(data=st.data(), api_key=st.text(max_size=64))
def test_any_flipped_bit_is_detected(data: st.DataObject, api_key: str) -> None:
    message = cipher.encrypt(api_key, TENANT)
    bit = data.draw(st.integers(min_value=0, max_value=len(message) * 8 - 1))
    with pytest.raises(CipherError):
        cipher.decrypt(flip(message, bit), TENANT)


def test_every_flipped_bit_of_one_message_is_detected() -> None:
    message = cipher.encrypt(PLAIN, TENANT)
    for bit in range(len(message) * 8):
        with pytest.raises(CipherError):
            cipher.decrypt(flip(message, bit), TENANT)


def test_key_id_of_a_tampered_message_is_a_cipher_error_or_an_id() -> None:
    """Reading the key id of a damaged message must not raise a UnicodeDecodeError."""
    message = cipher.encrypt(PLAIN, TENANT)
    for bit in range(len(message) * 8):
        try:
            key_id = cipher.key_id_of(flip(message, bit))
        except CipherError:
            continue
        assert isinstance(key_id, str)


@pytest.mark.parametrize(
    "message",
    [b"", b"\x01", b"\x02\x02k1" + bytes(40), b"\x01\xffk1" + bytes(40)],
    ids=repr,
)
def test_key_id_of_malformed_messages(message: bytes) -> None:
    with pytest.raises(CipherError):
        cipher.key_id_of(message)


def test_truncated_messages_are_rejected() -> None:
    message = cipher.encrypt(PLAIN, TENANT)
    for length in range(len(message)):
        with pytest.raises(CipherError):
            cipher.decrypt(message[:length], TENANT)
    with pytest.raises(CipherError):
        cipher.decrypt(message + b"\x00", TENANT)


@pytest.mark.parametrize("message", ["text", None, 5, [1, 2]], ids=repr)
def test_non_bytes_messages_are_rejected(message: object) -> None:
    with pytest.raises(CipherError):
        cipher.decrypt(message, TENANT)  # type: ignore[arg-type]


def test_a_key_id_not_in_the_ring_is_rejected() -> None:
    message = KeyCipher({"k9": OTHER_KEY}).encrypt(PLAIN, TENANT)
    with pytest.raises(CipherError, match="not in the ring"):
        cipher.decrypt(message, TENANT)
    # Same id, different key: the tag fails.
    impostor = KeyCipher({"k1": OTHER_KEY}).encrypt(PLAIN, TENANT)
    with pytest.raises(CipherError):
        cipher.decrypt(impostor, TENANT)


def test_cipher_error_is_a_tenant_store_error() -> None:
    assert issubclass(CipherError, TenantStoreError)
    with pytest.raises(TenantStoreError):
        cipher.decrypt(b"", TENANT)


# --- rotation -----------------------------------------------------------------------


def test_rotation_keeps_old_messages_readable_and_moves_them() -> None:
    before = KeyCipher({"old": OLD_KEY})
    old_message = before.encrypt(PLAIN, TENANT)
    ring = KeyCipher({"old": OLD_KEY, "new": NEW_KEY}, primary="new")
    assert ring.primary_key_id == "new"
    assert ring.key_id_of(old_message) == "old"
    assert ring.decrypt(old_message, TENANT) == PLAIN

    moved = ring.reencrypt(old_message, TENANT)
    assert ring.key_id_of(moved) == "new"
    assert ring.decrypt(moved, TENANT) == PLAIN
    assert ring.key_id_of(ring.encrypt(PLAIN, TENANT)) == "new"

    # Once the old key leaves the ring, only moved messages decrypt.
    after = KeyCipher({"new": NEW_KEY})
    assert after.decrypt(moved, TENANT) == PLAIN
    with pytest.raises(CipherError):
        after.decrypt(old_message, TENANT)
    with pytest.raises(CipherError):
        before.decrypt(moved, TENANT)


def test_reencrypt_checks_the_tenant() -> None:
    ring = KeyCipher({"new": NEW_KEY, "old": OLD_KEY})
    message = KeyCipher({"old": OLD_KEY}).encrypt(PLAIN, TENANT)
    with pytest.raises(CipherError):
        ring.reencrypt(message, OTHER_TENANT)


def test_the_first_key_is_primary_by_default() -> None:
    ring = KeyCipher({"b": NEW_KEY, "a": OLD_KEY})
    assert ring.primary_key_id == "b"
    assert ring.key_id_of(ring.encrypt(PLAIN, TENANT)) == "b"


def test_generate_key() -> None:
    keys = {KeyCipher.generate_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    ring = KeyCipher(dict(zip(map(str, range(20)), keys, strict=True)))
    assert ring.primary_key_id == "0"


# --- the ring from the environment --------------------------------------------------


def old_message_of(key_id: str) -> bytes:
    return KeyCipher({key_id: OLD_KEY}).encrypt(PLAIN, TENANT)


def test_from_env() -> None:
    ring = KeyCipher.from_env(f"new:{b64(NEW_KEY)},old:{b64(OLD_KEY)}")
    assert ring.primary_key_id == "new"
    assert ring.decrypt(old_message_of("old"), TENANT) == PLAIN
    assert ring.key_id_of(ring.encrypt(PLAIN, TENANT)) == "new"
    assert KeyCipher({"new": NEW_KEY}).decrypt(ring.encrypt(PLAIN, TENANT), TENANT)
    spaced = KeyCipher.from_env(f" 2026-11:{b64(NEW_KEY)} , 2026-05:{b64(OLD_KEY)} ")
    assert spaced.primary_key_id == "2026-11"
    assert spaced.decrypt(old_message_of("2026-05"), TENANT) == PLAIN
    assert spaced.decrypt(spaced.encrypt(PLAIN, TENANT), TENANT) == PLAIN


@pytest.mark.parametrize(
    "value",
    [
        "",
        ",",
        "k1",
        b64(OLD_KEY),
        f"k1:{b64(OLD_KEY)},",
        f":{b64(OLD_KEY)}",
        "k1:",
        "k1:not base64!",
        f"k1:{b64(OLD_KEY)[:-2]}",
        f"k1:{b64(OLD_KEY[:31])}",
        f"k1:{b64(OLD_KEY + b'x')}",
        f"k1:{b64(OLD_KEY)};k2:{b64(NEW_KEY)}",
    ],
    ids=repr,
)
def test_from_env_rejects(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        KeyCipher.from_env(value)
    assert info.value.field == "keys"
    for shown in renderings(info.value):
        assert not leaks(shown, OLD_KEY, NEW_KEY)


def test_from_env_rejects_a_duplicate_key_id() -> None:
    """A repeated id would silently drop a key, and with it every message under it."""
    with pytest.raises(InvalidInput) as info:
        KeyCipher.from_env(f"k1:{b64(NEW_KEY)},k1:{b64(OLD_KEY)}")
    assert info.value.field == "keys"


def test_from_env_never_echoes_key_material() -> None:
    """An operator who writes ``key:id`` instead of ``id:key`` must not see the key
    in the error (it goes to logs)."""
    with pytest.raises(InvalidInput) as info:
        KeyCipher.from_env(f"{b64(OLD_KEY)}:2026-11")
    for shown in renderings(info.value):
        assert not leaks(shown, OLD_KEY), shown


# --- malformed rings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "primary", "field"),
    [
        ({}, None, "keys"),
        ({"k1": OLD_KEY[:31]}, None, "keys"),
        ({"k1": OLD_KEY + b"x"}, None, "keys"),
        ({"k1": b""}, None, "keys"),
        ({"k1": b64(OLD_KEY)}, None, "keys"),
        ({"k1": OLD_KEY, "k2": NEW_KEY[:16]}, None, "keys"),
        ({"": OLD_KEY}, None, "keys"),
        ({"k" * 256: OLD_KEY}, None, "keys"),
        ({"é" * 128: OLD_KEY}, None, "keys"),
        ({b"k1": OLD_KEY}, None, "keys"),
        ({"k1": OLD_KEY}, "k2", "primary"),
        ({"k1": OLD_KEY}, "", "primary"),
    ],
    ids=repr,
)
def test_malformed_rings_are_invalid_input(
    keys: dict[object, object], primary: str | None, field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        KeyCipher(keys, primary=primary)  # type: ignore[arg-type]
    assert info.value.field == field
    for shown in renderings(info.value):
        assert not leaks(shown, OLD_KEY, NEW_KEY), shown


LOW_ENTROPY_KEYS = [
    bytes(32),
    b"\xff" * 32,
    b"A" * 32,
    b"ab" * 16,
    bytes(range(8)) * 4,
    bytes(range(15)) * 2 + b"\x00\x01",  # a 15-byte pattern
    OLD_KEY[:1] * 18 + OLD_KEY[1:15],  # 15 distinct values: one short of the rule
]


@pytest.mark.parametrize("weak", LOW_ENTROPY_KEYS, ids=lambda k: k[:4].hex())
def test_a_key_of_very_low_entropy_is_refused(weak: bytes) -> None:
    """Item 13: all zeros, one byte repeated, a short pattern: never a random key."""
    assert len(weak) == 32
    assert len(set(weak)) < MIN_DISTINCT_BYTES
    for ring in ({"k1": weak}, {"k1": OLD_KEY, "k2": weak}):
        with pytest.raises(InvalidInput) as info:
            KeyCipher(ring)
        assert info.value.field == "keys"
        assert "not random" in str(info.value)
        for shown in renderings(info.value):
            assert not leaks(shown, weak, OLD_KEY), shown
    with pytest.raises(InvalidInput) as from_env:
        KeyCipher.from_env(f"k1:{b64(weak)}")
    assert "not random" in str(from_env.value)
    for shown in renderings(from_env.value):
        assert not leaks(shown, weak), shown
    assert b64(weak) not in str(from_env.value)


def test_the_entropy_rule_never_refuses_a_random_key() -> None:
    """The threshold is far below what 32 random bytes hold (about 30 distinct
    values; fewer than 16 with probability 3.2e-17): generated keys all pass."""
    for _ in range(2000):
        KeyCipher({"k": KeyCipher.generate_key()})
    assert len(set(bytes(range(16)) * 2)) == MIN_DISTINCT_BYTES
    KeyCipher({"k": bytes(range(16)) * 2})  # the boundary is accepted


def test_a_key_id_with_lone_surrogates_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as info:
        KeyCipher({"k\ud800": OLD_KEY})
    assert info.value.field == "keys"


def test_key_id_limits() -> None:
    longest = "k" * 255
    ring = KeyCipher({longest: OLD_KEY, "é": NEW_KEY})
    assert ring.key_id_of(ring.encrypt(PLAIN, TENANT)) == longest
    accented = KeyCipher({"é": NEW_KEY})
    assert accented.key_id_of(accented.encrypt(PLAIN, TENANT)) == "é"
    assert ring.decrypt(accented.encrypt(PLAIN, TENANT), TENANT) == PLAIN


def test_a_bytearray_key_is_copied() -> None:
    key = bytearray(OLD_KEY)
    ring = KeyCipher({"k1": key})  # type: ignore[dict-item]
    message = ring.encrypt(PLAIN, TENANT)
    key[:] = bytes(32)
    assert ring.decrypt(message, TENANT) == PLAIN


# --- nothing leaks ------------------------------------------------------------------


def test_repr_and_str_show_ids_only() -> None:
    ring = KeyCipher({"new": NEW_KEY, "old": OLD_KEY}, primary="new")
    for shown in (repr(ring), str(ring), format(ring)):
        assert "new" in shown
        assert "old" in shown
        assert not leaks(shown, NEW_KEY, OLD_KEY, PLAIN)
    assert not hasattr(ring, "__dict__")


def cipher_errors() -> Iterator[CipherError]:
    message = cipher.encrypt(PLAIN, TENANT)
    attempts: list[Callable[[], object]] = [
        lambda: cipher.decrypt(message, OTHER_TENANT),
        lambda: cipher.decrypt(flip(message, 100), TENANT),
        lambda: cipher.decrypt(flip(message, len(message) * 8 - 1), TENANT),
        lambda: cipher.decrypt(message[:-1], TENANT),
        lambda: cipher.decrypt(message[:10], TENANT),
        lambda: cipher.decrypt(b"\x02" + message[1:], TENANT),
        lambda: KeyCipher({"k2": NEW_KEY}).decrypt(message, TENANT),
        lambda: KeyCipher({"k1": NEW_KEY}).decrypt(message, TENANT),
        lambda: cipher.decrypt(PLAIN, TENANT),  # type: ignore[arg-type]
    ]
    for attempt in attempts:
        try:
            attempt()
        except CipherError as error:
            yield error
        else:
            pytest.fail("expected a CipherError")


def test_cipher_errors_never_show_keys_or_plaintext() -> None:
    message = cipher.encrypt(PLAIN, TENANT)
    errors = list(cipher_errors())
    assert len(errors) == 9
    for error in errors:
        assert error.__cause__ is None
        for shown in renderings(error):
            assert not leaks(shown, OLD_KEY, NEW_KEY, PLAIN, message), shown


def test_encrypting_a_key_with_lone_surrogates_is_invalid_input() -> None:
    """The UnicodeEncodeError that encoding raises holds the whole plaintext in its
    args (so in its repr): it must not escape."""
    secret = PLAIN + "\ud800"
    with pytest.raises(InvalidInput) as info:
        cipher.encrypt(secret, TENANT)
    for shown in renderings(info.value):
        assert PLAIN not in shown


# --- encrypted_key_for_write and the repositories -----------------------------------


def test_encrypted_key_for_write() -> None:
    key = generate_api_key()
    digest = hash_api_key(key)
    message = encrypted_key_for_write(digest, TENANT, key, cipher)
    assert message is not None
    assert cipher.decrypt(message, TENANT) == key
    assert encrypted_key_for_write(digest, TENANT, None, cipher) is None
    assert encrypted_key_for_write(digest, TENANT, key, None) is None


@pytest.mark.parametrize("with_cipher", [True, False])
def test_encrypted_key_for_write_rejects_a_key_that_does_not_match(
    with_cipher: bool,
) -> None:
    key = generate_api_key()
    other = hash_api_key(generate_api_key())
    with pytest.raises(InvalidInput) as info:
        encrypted_key_for_write(other, TENANT, key, cipher if with_cipher else None)
    assert info.value.field == "api_key"
    for shown in renderings(info.value):
        assert key not in shown
        assert other not in shown


def test_the_repository_stores_and_reveals_the_encrypted_key() -> None:
    key = generate_api_key()
    tenants = InMemoryTenantRepository(cipher=cipher)
    tenant = tenants.create(
        Tenant(id=TENANT, name="Acme", api_key_hash=hash_api_key(key)), api_key=key
    )
    assert tenants.reveal_api_key(TENANT) == key
    new_key = generate_api_key()
    tenants.update(
        dataclasses.replace(tenant, api_key_hash=hash_api_key(new_key)),
        api_key=new_key,
    )
    assert tenants.reveal_api_key(TENANT) == new_key
    with pytest.raises(InvalidInput) as info:
        tenants.update(tenant, api_key=new_key)
    assert info.value.field == "api_key"
    assert tenants.reveal_api_key(TENANT) == new_key
