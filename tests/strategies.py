"""Hypothesis strategies: valid and hostile tenants, records, money and times.

Values are drawn from small pools (ids, keys, request ids) so that operations
collide: the same tenant is updated, deleted and looked up again, the same request
is recorded twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import strategies as st

from tenantstore import generate_api_key

# Deterministic pools (derandomized CI runs must not depend on os.urandom).
IDS = [str(uuid.UUID(int=(i + 1) * 0x1111_1111_1111_1111_1111)) for i in range(5)]
KEYS = [generate_api_key() for _ in range(4)] + ["sk-legacy-0001", "ключ-ünïcode"]
REQUEST_IDS = ["req-1", "req-2", "Req-1", "req-é", "req-\U0001f600", "a b"]

HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x" * 256,
    "'; DROP TABLE tenants; --",
    "Robert'); DELETE FROM usage_records; --",
    "%s %(name)s {}",
    "\\x00",
    "🙂" * 10,
]

ODD_LOOKUPS = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.sampled_from(
        [
            IDS[0].upper(),
            "{" + IDS[0] + "}",
            IDS[0].replace("-", ""),
            "0" * 64,
            "G" * 64,
            "tsk_" + "A" * 49,
            KEYS[0][:-1] + ("x" if KEYS[0][-1] != "x" else "y"),
        ]
    ),
    st.text(max_size=80),
)

# Not a str at all, as a caller's bug passes it: each is simply not found (never a
# TypeError), including a UUID object for a real id and unhashable values.
NON_STR_LOOKUPS = st.sampled_from(
    [
        None,
        0,
        5,
        1.5,
        True,
        b"bytes",
        bytearray(b"x"),
        ["x"],
        [IDS[0]],
        (IDS[0],),
        {IDS[0]: 1},
        uuid.UUID(IDS[0]),
        IDS[0].encode(),
    ]
)

ids = st.sampled_from(IDS)
keys = st.sampled_from(KEYS)
request_ids = st.sampled_from(REQUEST_IDS)
# Mostly real ids and keys, sometimes anything at all (a str or not).
_odd = st.one_of(ODD_LOOKUPS, NON_STR_LOOKUPS)
some_ids = st.integers(0, 4).flatmap(lambda i: _odd if i == 0 else ids)
some_keys = st.integers(0, 4).flatmap(lambda i: _odd if i == 0 else keys)

valid_names = st.one_of(
    st.sampled_from(["Acme", "acme", "Ünïcode Ltd", "🙂", "'; DROP TABLE tenants; --"]),
    st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != ""),
)
valid_money = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False),
    st.decimals(min_value=0, max_value=1, places=14, allow_nan=False),
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            Decimal("0.005"),
            Decimal("0.015"),
            Decimal("0.00000000005"),
            Decimal("0.00000000015"),
            Decimal("-0"),
            Decimal("1E+2"),
            Decimal("99999999.994"),
            "12.345",
        ]
    ),
)
valid_counts = st.integers(min_value=0, max_value=2**31 - 1)
valid_models = st.lists(
    st.sampled_from(["gpt-4o", "claude-3", "llama", "ümlaut", "Z", "a"]), max_size=4
)
valid_provider = st.sampled_from(["openai", "anthropic", "azure", "ö" * 50])
valid_providers = st.lists(valid_provider, max_size=3)
valid_status = st.sampled_from(["success", "error", "timeout", "s" * 20])

# Values that each field must reject, by field; a rule corrupts at most one field.
HOSTILE: dict[str, list[object]] = {
    "name": ["", " ", "\x00", "a\x00b", "\ud800", "x" * 256, 5],
    "budget_usd": [
        Decimal("-0.001"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("99999999.995"),
        "abc",
        float("nan"),
        True,
        None,
    ],
    "cost_usd": [Decimal("-1"), Decimal("sNaN"), Decimal("1E+10"), "x", None],
    "rate_limit_rpm": [-1, 2**31, True, 1.5],
    "input_tokens": [-1, 2**31, False, 1.5],
    "allowed_models": ["gpt-4o", ["ok", ""], ["ok", "\x00"], [1]],
    "default_provider": ["x" * 51, "\x00"],
    "fallback_providers": [["x" * 51], "openai"],
    "enabled": [1, "yes", None],
    "cached": [1, "no"],
    "request_id": ["", "r" * 256, "\ud800"],
    "model": ["m" * 256, "\x00"],
    "provider": ["p" * 51],
    "status": ["", "s" * 21],
    "timestamp": [datetime(2026, 1, 1), "2026-01-01"],
}


def corruption(fields: list[str]) -> st.SearchStrategy[tuple[str, object] | None]:
    """None most of the time; else one of `fields` with a value it must reject."""
    bad = st.sampled_from(fields).flatmap(
        lambda f: st.tuples(st.just(f), st.sampled_from(HOSTILE[f]))
    )
    return st.integers(0, 5).flatmap(lambda i: bad if i == 0 else st.none())


offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
)
BASE = datetime(2026, 1, 1, tzinfo=UTC)
instants = st.one_of(
    st.integers(min_value=-3 * 86400, max_value=3 * 86400).map(
        lambda s: BASE + timedelta(seconds=s)
    ),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=offsets,
    ),
)
maybe_naive = st.integers(0, 5).flatmap(
    lambda i: st.just(datetime(2026, 1, 1)) if i == 0 else instants
)
