"""API keys: the generated format, its checksum, hashing, and the lookup hash."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantstore import (
    InMemoryTenantRepository,
    InvalidInput,
    Tenant,
    TenantNotFound,
    generate_api_key,
    hash_api_key,
    is_plausible_api_key,
)
from tenantstore._keys import (
    KEY_LENGTH,
    KEY_PREFIX,
    TAGGED_KEY_LENGTH,
    is_tagged_api_key,
    lookup_hash,
)

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_RE = re.compile(r"tsk_[0-9A-Za-z]{49}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
# Keys are random, so the properties below draw from a fixed sample of them.
SAMPLE_KEYS = [generate_api_key() for _ in range(20)]
FOREIGN_KEYS = ["sk-legacy-0001", "ключ-ünïcode", "x", "TSK_abc", "tsk", " tsk_a"]


# --- generate_api_key ---------------------------------------------------------------


def test_generated_key_format() -> None:
    key = generate_api_key()
    assert KEY_PREFIX == "tsk_"
    assert KEY_LENGTH == 4 + 43 + 6 == 53
    assert len(key) == KEY_LENGTH
    assert KEY_RE.fullmatch(key)
    assert set(key[4:]) <= set(ALPHABET)
    assert is_plausible_api_key(key)
    assert key.isascii()


def test_generated_keys_are_unique_and_well_formed() -> None:
    keys = [generate_api_key() for _ in range(1000)]
    assert len(set(keys)) == 1000
    assert all(KEY_RE.fullmatch(k) and is_plausible_api_key(k) for k in keys)
    # 256 random bits: the bodies alone never collide, and every position varies.
    assert len({k[4:47] for k in keys}) == 1000
    for position in range(4, 47):
        assert len({k[position] for k in keys}) > 20


def base62(number: int, width: int) -> str:
    digits = ""
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits = ALPHABET[digit] + digits
    assert number == 0
    return digits


@pytest.mark.parametrize("key", SAMPLE_KEYS)
def test_the_checksum_is_the_base62_crc32_of_the_rest(key: str) -> None:
    """The documented format, so that other tools (secret scanners) can check keys."""
    assert key[-6:] == base62(zlib.crc32(key[:-6].encode("ascii")), 6)


@given(body=st.text(alphabet=ALPHABET, min_size=43, max_size=43))
def test_any_body_with_its_base62_crc32_is_plausible(body: str) -> None:
    head = KEY_PREFIX + body
    assert is_plausible_api_key(head + base62(zlib.crc32(head.encode()), 6))


@given(
    key=st.sampled_from(SAMPLE_KEYS),
    position=st.integers(min_value=len(KEY_PREFIX), max_value=KEY_LENGTH - 1),
    replacement=st.sampled_from(ALPHABET),
)
def test_any_single_substitution_fails_the_checksum(
    key: str, position: int, replacement: str
) -> None:
    mistyped = key[:position] + replacement + key[position + 1 :]
    if mistyped == key:
        assert is_plausible_api_key(mistyped)
        return
    assert len(mistyped) == len(key)
    assert not is_plausible_api_key(mistyped)
    assert lookup_hash(mistyped) is None


@pytest.mark.parametrize("key", SAMPLE_KEYS[:3])
def test_every_single_substitution_fails_the_checksum_exhaustively(key: str) -> None:
    for position in range(len(KEY_PREFIX), KEY_LENGTH):
        for replacement in ALPHABET:
            if replacement != key[position]:
                mistyped = key[:position] + replacement + key[position + 1 :]
                assert not is_plausible_api_key(mistyped), (position, replacement)


@pytest.mark.parametrize("key", SAMPLE_KEYS[:3])
def test_truncated_extended_and_foreign_characters_fail(key: str) -> None:
    assert not is_plausible_api_key(key[:-1])
    assert not is_plausible_api_key(key + "0")
    assert not is_plausible_api_key(key[:10] + "-" + key[11:])
    assert not is_plausible_api_key(key[:10] + "é" + key[11:])
    assert not is_plausible_api_key(KEY_PREFIX)
    assert not is_plausible_api_key(KEY_PREFIX + "A" * 49)


@pytest.mark.parametrize("key", FOREIGN_KEYS)
def test_foreign_format_keys_are_plausible(key: str) -> None:
    assert is_plausible_api_key(key)
    assert lookup_hash(key) == hash_api_key(key)


@pytest.mark.parametrize("value", ["", None, 5, b"tsk_", ["tsk_"]], ids=repr)
def test_non_keys_are_not_plausible(value: object) -> None:
    assert not is_plausible_api_key(value)


# --- hash_api_key -------------------------------------------------------------------


@given(key=st.one_of(st.text(), st.sampled_from(SAMPLE_KEYS + FOREIGN_KEYS)))
def test_hash_is_sha256_hex_of_utf8(key: str) -> None:
    digest = hash_api_key(key)
    assert digest == hashlib.sha256(key.encode("utf-8")).hexdigest()
    assert HEX64_RE.fullmatch(digest)


def test_hash_known_vector() -> None:
    assert hash_api_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert hash_api_key("é") == hashlib.sha256(b"\xc3\xa9").hexdigest()


@pytest.mark.parametrize("value", ["\ud800", "tsk_\udfff", "a\udc80b"], ids=repr)
def test_hash_rejects_lone_surrogates(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        hash_api_key(value)
    assert info.value.field == "api_key"


@pytest.mark.parametrize("value", [None, 5, b"tsk_abc", bytearray(b"k")], ids=repr)
def test_hash_rejects_non_str(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        hash_api_key(value)  # type: ignore[arg-type]
    assert info.value.field == "api_key"


# --- lookup_hash --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        5,
        b"key",
        "\ud800",
        "sk-\udfff",
        KEY_PREFIX,
        KEY_PREFIX + "A" * 49,
        SAMPLE_KEYS[0][:-1] + ("x" if SAMPLE_KEYS[0][-1] != "x" else "y"),
    ],
    ids=repr,
)
def test_lookup_hash_is_none_when_no_tenant_can_own_the_key(value: object) -> None:
    assert lookup_hash(value) is None


def test_lookup_hash_of_a_generated_key_is_its_hash() -> None:
    for key in SAMPLE_KEYS:
        assert lookup_hash(key) == hash_api_key(key)


junk = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.binary().map(
        lambda b: b[: len(b) // 2 * 2].decode("utf-16-le", "surrogatepass")
    ),
    st.text(alphabet=ALPHABET + "_-", min_size=49, max_size=49).map(
        lambda s: KEY_PREFIX + s
    ),
)


@given(value=junk)
def test_lookup_hash_never_raises(value: str) -> None:
    result = lookup_hash(value)
    if result is not None:
        assert result == hashlib.sha256(value.encode("utf-8")).hexdigest()
        assert is_plausible_api_key(value)
    tenants = InMemoryTenantRepository()
    with pytest.raises(TenantNotFound):
        tenants.get_by_api_key(value)


@given(body=st.text(alphabet=ALPHABET, min_size=49, max_size=49))
def test_forged_keys_of_our_format_are_rejected_unless_the_checksum_holds(
    body: str,
) -> None:
    key = KEY_PREFIX + body
    # A random checksum holds with odds of about 1 in 62**6: these never do.
    assert not is_plausible_api_key(key)
    assert lookup_hash(key) is None


def test_a_generated_key_authenticates_by_its_hash() -> None:
    key = generate_api_key()
    tenants = InMemoryTenantRepository()
    created = tenants.create(Tenant(name="Acme", api_key_hash=hash_api_key(key)))
    assert tenants.get_by_api_key(key) == created
    assert tenants.get_by_api_key_hash(hash_api_key(key)) == created
    with pytest.raises(TenantNotFound):
        tenants.get_by_api_key(key[:-1] + ("0" if key[-1] != "0" else "1"))


# --- keyed tags (a deployment secret) -----------------------------------------------

SECRET = bytes(range(32))


def test_a_tagged_key_carries_an_hmac_tag_before_its_checksum() -> None:
    key = generate_api_key(secret=SECRET)
    assert len(key) == TAGGED_KEY_LENGTH == KEY_LENGTH + 6
    head, tag, check = key[:47], key[47:53], key[53:]
    digest = hmac.digest(SECRET, head.encode(), "sha256")
    assert tag == base62(int.from_bytes(digest[:4], "big"), 6)
    assert check == base62(zlib.crc32(key[:53].encode()), 6)
    # Still one of our keys for every repository (the checksum holds)...
    assert is_plausible_api_key(key)
    assert lookup_hash(key) == hash_api_key(key)
    # ...and tagged only for its own secret (or a ring holding it).
    assert is_tagged_api_key(key, [SECRET])
    assert is_tagged_api_key(key, [secrets.token_bytes(32), SECRET])
    assert not is_tagged_api_key(key, [secrets.token_bytes(32)])
    assert not is_tagged_api_key(generate_api_key(), [SECRET])


@given(position=st.integers(4, TAGGED_KEY_LENGTH - 1), char=st.sampled_from(ALPHABET))
def test_any_substitution_breaks_the_tag_or_the_checksum(
    position: int, char: str
) -> None:
    key = generate_api_key(secret=SECRET)
    forged = key[:position] + char + key[position + 1 :]
    assert is_tagged_api_key(forged, [SECRET]) == (forged == key)


@pytest.mark.parametrize("value", [None, 42, "tsk_", "\ud800" * 59, b"x" * 59])
def test_is_tagged_never_raises(value: object) -> None:
    assert not is_tagged_api_key(value, [SECRET])
