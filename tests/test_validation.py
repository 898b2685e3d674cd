"""The domain boundary: every check and normalisation in `tenantstore._validation`.

Each rule is tested on the function that owns it and, where a field uses it, through
`tenant_for_write` / `usage_for_write` and the in-memory backend, so the field named
in `InvalidInput` is the one a caller passed.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantstore import (
    InMemoryTenantRepository,
    InMemoryUsageRepository,
    InvalidInput,
    Tenant,
    TenantNotFound,
    TenantStoreError,
    UsageRecord,
    generate_api_key,
    hash_api_key,
)
from tenantstore._cipher import encrypted_key_for_write
from tenantstore._validation import (
    BUDGET_MAX,
    COST_MAX,
    INT_MAX,
    canonical_id,
    integer,
    is_canonical_id,
    is_key_hash,
    money,
    tenant_for_write,
    text,
    usage_for_write,
    utc_datetime,
)

CENTS = Decimal("0.01")
COST_STEP = Decimal("1E-10")
TENANT_ID = "0b6f5c1e-3f3a-4c1e-9a57-2f4b1d6a9c10"
HASH = hash_api_key("tsk-test-key")

# (field, step, maximum): the two money columns.
MONEY = [("budget_usd", CENTS, BUDGET_MAX), ("cost_usd", COST_STEP, COST_MAX)]


def a_tenant(**changes: object) -> Tenant:
    tenant = Tenant(id=TENANT_ID, name="Acme", api_key_hash=HASH)
    return dataclasses.replace(tenant, **changes)  # type: ignore[arg-type]


def a_record(**changes: object) -> UsageRecord:
    record = UsageRecord(
        tenant_id=TENANT_ID, request_id="req-1", model="gpt-4o", provider="openai"
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def expected_money(value: Decimal | int | str | float, step: Decimal) -> Decimal:
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return exact.quantize(step, rounding=ROUND_HALF_EVEN).copy_abs()


# --- money ------------------------------------------------------------------------


def money_in_range(maximum: Decimal) -> st.SearchStrategy[Decimal | int | str | float]:
    decimals = st.decimals(
        min_value=0, max_value=maximum, allow_nan=False, allow_infinity=False
    )
    return st.one_of(
        decimals,
        decimals.map(str),
        st.integers(min_value=0, max_value=int(maximum)),
        st.integers(min_value=0, max_value=int(maximum)).map(str),
        st.floats(min_value=0, max_value=float(maximum), allow_nan=False).filter(
            lambda f: Decimal(repr(f)) <= maximum
        ),
        st.sampled_from(
            [
                Decimal("-0"),
                "-0.000",
                -0.0,
                Decimal("0.005"),
                Decimal("0.015"),
                Decimal("0.025"),
                Decimal("0.00000000005"),
                Decimal("0.00000000015"),
                Decimal("1E-40"),
                "1e2",
                maximum,
                str(maximum),
            ]
        ),
    )


@pytest.mark.parametrize(("field", "step", "maximum"), MONEY)
@given(data=st.data())
def test_money_is_quantized_half_even(
    field: str, step: Decimal, maximum: Decimal, data: st.DataObject
) -> None:
    value = data.draw(money_in_range(maximum))
    result = money(field, value, step, maximum)
    assert type(result) is Decimal
    assert result == expected_money(value, step)
    assert result.as_tuple().exponent == step.as_tuple().exponent
    assert not result.is_signed()
    assert 0 <= result <= maximum


@given(value=money_in_range(BUDGET_MAX))
def test_budget_never_prints_a_minus(value: Decimal | int | str | float) -> None:
    assert "-" not in str(money("budget_usd", value, CENTS, BUDGET_MAX))


@pytest.mark.parametrize(
    ("value", "budget", "cost"),
    [
        (Decimal("0.005"), "0.00", "0.0050000000"),
        (Decimal("0.015"), "0.02", "0.0150000000"),
        (Decimal("2.675"), "2.68", "2.6750000000"),
        (Decimal("2.665"), "2.66", "2.6650000000"),
        (Decimal("0.00000000005"), "0.00", "0E-10"),
        (Decimal("0.00000000015"), "0.00", "2E-10"),
        (Decimal("-0"), "0.00", "0E-10"),
        (-0.0, "0.00", "0E-10"),
        (0.1, "0.10", "0.1000000000"),
        (2.675, "2.68", "2.6750000000"),  # by repr: the binary value is 2.67499…
        (1e-7, "0.00", "1.000E-7"),
        (7, "7.00", "7.0000000000"),
        (" 12.345 ", "12.34", "12.3450000000"),
    ],
)
def test_money_examples(
    value: Decimal | int | str | float, budget: str, cost: str
) -> None:
    assert money("budget_usd", value, CENTS, BUDGET_MAX) == Decimal(budget)
    assert str(money("budget_usd", value, CENTS, BUDGET_MAX)) == budget
    assert money("cost_usd", value, COST_STEP, COST_MAX) == Decimal(cost)


def test_float_is_taken_by_its_shortest_repr() -> None:
    assert money("cost_usd", 0.1, COST_STEP, COST_MAX) == Decimal("0.1")
    assert Decimal.from_float(0.1) != Decimal("0.1")  # the naive conversion
    assert money("cost_usd", 1e-10, COST_STEP, COST_MAX) == Decimal("1E-10")


@pytest.mark.parametrize(("field", "step", "maximum"), MONEY)
def test_money_exactly_at_the_maximum_is_accepted(
    field: str, step: Decimal, maximum: Decimal
) -> None:
    assert money(field, maximum, step, maximum) == maximum
    assert money(field, str(maximum), step, maximum) == maximum


def test_budget_that_rounds_over_the_maximum_is_rejected() -> None:
    for value in (Decimal("99999999.995"), "99999999.995", 99999999.995):
        with pytest.raises(InvalidInput) as info:
            money("budget_usd", value, CENTS, BUDGET_MAX)
        assert info.value.field == "budget_usd"
    # Below the maximum, rounding half to even still applies.
    assert money("budget_usd", "99999999.985", CENTS, BUDGET_MAX) == Decimal(
        "99999999.98"
    )
    assert money("budget_usd", "99999999.9849", CENTS, BUDGET_MAX) == Decimal(
        "99999999.98"
    )


NOT_MONEY: list[object] = [
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    float("nan"),
    float("inf"),
    float("-inf"),
    "NaN",
    "sNaN",
    "inf",
    "-Infinity",
    Decimal("-0.01"),
    Decimal("-1E-30"),
    -1,
    -0.5,
    "-3",
    True,
    False,
    None,
    "",
    " ",
    "abc",
    "1,5",
    "0x10",
    "1e",
    "$5",
    b"5",
    [5],
    {"amount": 5},
    1 + 0j,
]


@pytest.mark.parametrize(("field", "step", "maximum"), MONEY)
@pytest.mark.parametrize("value", NOT_MONEY, ids=repr)
def test_money_rejects(
    field: str, step: Decimal, maximum: Decimal, value: object
) -> None:
    with pytest.raises(InvalidInput) as info:
        money(field, value, step, maximum)
    assert info.value.field == field


@pytest.mark.parametrize(("field", "step", "maximum"), MONEY)
@given(excess=st.decimals(min_value=Decimal("1E-12"), max_value=10**15, places=12))
def test_money_over_the_column_maximum_is_rejected(
    field: str, step: Decimal, maximum: Decimal, excess: Decimal
) -> None:
    # The maximum applies to the stored (rounded) value: what rounds down to it fits.
    value = maximum + excess
    if value.quantize(step, rounding=ROUND_HALF_EVEN) == maximum:
        assert money(field, value, step, maximum) == maximum
        return
    with pytest.raises(InvalidInput) as info:
        money(field, value, step, maximum)
    assert info.value.field == field


@given(
    value=st.decimals(
        max_value=Decimal("-1E-30"), allow_nan=False, allow_infinity=False
    )
)
def test_negative_money_is_rejected(value: Decimal) -> None:
    with pytest.raises(InvalidInput) as info:
        money("budget_usd", value, CENTS, BUDGET_MAX)
    assert info.value.field == "budget_usd"


def test_money_fields_through_validation() -> None:
    tenant = tenant_for_write(a_tenant(budget_usd=Decimal("10.005")))
    assert str(tenant.budget_usd) == "10.00"
    record = usage_for_write(a_record(cost_usd=0.1))
    assert record.cost_usd == Decimal("0.1000000000")
    with pytest.raises(InvalidInput) as info:
        tenant_for_write(a_tenant(budget_usd=Decimal("NaN")))
    assert info.value.field == "budget_usd"
    with pytest.raises(InvalidInput) as info:
        usage_for_write(a_record(cost_usd=float("inf")))
    assert info.value.field == "cost_usd"


# --- integers -----------------------------------------------------------------------


@given(value=st.integers(min_value=0, max_value=INT_MAX))
def test_integers_in_range_are_kept(value: int) -> None:
    assert integer("rate_limit_rpm", value) == value


@pytest.mark.parametrize(
    "value", [True, False, -1, 2**31, 2**63, 1.0, 1.5, "1", None, Decimal(1)], ids=repr
)
def test_integers_reject(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        integer("latency_ms", value)
    assert info.value.field == "latency_ms"


def test_integer_bounds() -> None:
    assert INT_MAX == 2**31 - 1
    assert integer("input_tokens", 2**31 - 1) == 2**31 - 1
    assert integer("input_tokens", 0) == 0


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("rate_limit_rpm", lambda v: tenant_for_write(a_tenant(rate_limit_rpm=v))),
        ("input_tokens", lambda v: usage_for_write(a_record(input_tokens=v))),
        ("output_tokens", lambda v: usage_for_write(a_record(output_tokens=v))),
        ("latency_ms", lambda v: usage_for_write(a_record(latency_ms=v))),
    ],
)
@pytest.mark.parametrize("value", [True, -1, 2**31, 3.0])
def test_integer_fields_name_themselves(
    field: str, make: Callable[[object], object], value: object
) -> None:
    with pytest.raises(InvalidInput) as info:
        make(value)
    assert info.value.field == field


# --- text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a\x00b", "\x00", "\ud800", "ok\udfff", "x" * 256, 5, b"bytes", None],
    ids=repr,
)
def test_text_rejects(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        text("model", value, 255)
    assert info.value.field == "model"


def test_text_length_is_counted_in_characters() -> None:
    assert text("name", "é" * 255, 255) == "é" * 255
    assert text("name", "🙂" * 255, 255) == "🙂" * 255
    with pytest.raises(InvalidInput):
        text("name", "é" * 256, 255)


@given(value=st.text(max_size=255).filter(lambda s: "\x00" not in s))
def test_text_without_nul_within_the_limit_is_kept(value: str) -> None:
    assert text("model", value, 255) == value


@pytest.mark.parametrize("blank", ["", " ", "\t\n", "\u3000"], ids=repr)
def test_blank_names_are_rejected(blank: str) -> None:
    with pytest.raises(InvalidInput) as info:
        tenant_for_write(a_tenant(name=blank))
    assert info.value.field == "name"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "n" * 256}, "name"),
        ({"name": "a\x00"}, "name"),
        ({"name": "\ud800"}, "name"),
        ({"name": 42}, "name"),
        ({"default_provider": "p" * 51}, "default_provider"),
        ({"default_provider": 1}, "default_provider"),
        ({"allowed_models": ["ok", ""]}, "allowed_models[1]"),
        ({"allowed_models": ["ok", "fine", "a\x00"]}, "allowed_models[2]"),
        ({"allowed_models": [1]}, "allowed_models[0]"),
        ({"allowed_models": "gpt-4o"}, "allowed_models"),
        ({"allowed_models": None}, "allowed_models"),
        ({"fallback_providers": ["openai", "p" * 51]}, "fallback_providers[1]"),
        ({"fallback_providers": "openai"}, "fallback_providers"),
        ({"enabled": 1}, "enabled"),
        ({"api_key_hash": HASH.upper()}, "api_key_hash"),
        ({"id": TENANT_ID.upper()}, "id"),
    ],
    ids=str,
)
def test_tenant_fields_name_themselves(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        tenant_for_write(a_tenant(**changes))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 256}, "request_id"),
        ({"model": "m" * 256}, "model"),
        ({"model": "\x00"}, "model"),
        ({"provider": "p" * 51}, "provider"),
        ({"status": "s" * 21}, "status"),
        ({"status": " "}, "status"),
        ({"cached": 0}, "cached"),
        ({"timestamp": datetime(2026, 1, 1)}, "timestamp"),
        ({"timestamp": "2026-01-01T00:00:00Z"}, "timestamp"),
        ({"tenant_id": "not-a-uuid"}, "tenant_id"),
    ],
    ids=str,
)
def test_record_fields_name_themselves(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        usage_for_write(a_record(**changes))
    assert info.value.field == field


def test_limits_of_the_columns_are_inclusive() -> None:
    tenant = tenant_for_write(
        a_tenant(
            name="n" * 255,
            default_provider="p" * 50,
            allowed_models=["m" * 255],
            fallback_providers=["f" * 50],
        )
    )
    assert len(tenant.name) == 255
    record = usage_for_write(
        a_record(
            request_id="r" * 255, model="m" * 255, provider="p" * 50, status="s" * 20
        )
    )
    assert len(record.status) == 20


def test_sequences_become_tuples_in_order() -> None:
    tenant = tenant_for_write(
        a_tenant(allowed_models=["b", "a", "b"], fallback_providers=["z", "y"])
    )
    assert tenant.allowed_models == ("b", "a", "b")
    assert tenant.fallback_providers == ("z", "y")


def test_a_non_tenant_is_rejected() -> None:
    with pytest.raises(InvalidInput) as info:
        tenant_for_write({"name": "Acme"})
    assert info.value.field == "tenant"
    with pytest.raises(InvalidInput) as info:
        usage_for_write({"tenant_id": TENANT_ID})
    assert info.value.field == "record"


# --- datetimes ----------------------------------------------------------------------


offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59),
        max_value=timedelta(hours=23, minutes=59),
    ),
)


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
    )
)
def test_aware_datetimes_become_utc(moment: datetime) -> None:
    result = utc_datetime("since", moment)
    assert result == moment
    assert result.tzinfo is UTC
    assert result.utcoffset() == timedelta(0)
    assert result.replace(tzinfo=None) == moment.replace(tzinfo=None) - (
        moment.utcoffset() or timedelta(0)
    )


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(InvalidInput) as info:
        utc_datetime("since", datetime(2026, 1, 1))
    assert info.value.field == "since"
    with pytest.raises(InvalidInput) as info:
        utc_datetime("since", "2026-01-01T00:00:00+00:00")
    assert info.value.field == "since"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime.min.replace(tzinfo=timezone(timedelta(minutes=1))),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
        datetime.max.replace(tzinfo=timezone(timedelta(microseconds=-1))),
    ],
)
def test_datetimes_that_overflow_in_utc_are_invalid_input(moment: datetime) -> None:
    with pytest.raises(InvalidInput) as info:
        utc_datetime("timestamp", moment)
    assert info.value.field == "timestamp"
    with pytest.raises(InvalidInput) as info:
        usage_for_write(a_record(timestamp=moment))
    assert info.value.field == "timestamp"


def test_datetime_edges_that_fit_are_kept() -> None:
    assert utc_datetime("t", datetime.min.replace(tzinfo=UTC)) == datetime.min.replace(
        tzinfo=UTC
    )
    assert utc_datetime(
        "t", datetime.max.replace(tzinfo=timezone(timedelta(hours=5)))
    ) == datetime.max.replace(tzinfo=timezone(timedelta(hours=5)))


def test_usage_lookups_validate_since() -> None:
    tenants = InMemoryTenantRepository()
    usage = InMemoryUsageRepository(tenants)
    with pytest.raises(InvalidInput) as info:
        usage.get_tenant_usage(TENANT_ID, datetime(2026, 1, 1))
    assert info.value.field == "since"
    with pytest.raises(InvalidInput) as info:
        usage.get_tenant_total_cost(
            TENANT_ID, datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
        )
    assert info.value.field == "since"


# --- ids ----------------------------------------------------------------------------

NON_CANONICAL_IDS = [
    TENANT_ID.upper(),
    "{" + TENANT_ID + "}",
    TENANT_ID.replace("-", ""),
    "urn:uuid:" + TENANT_ID,
    TENANT_ID + "\n",
    " " + TENANT_ID,
    TENANT_ID[:-1],
    TENANT_ID + "0",
    TENANT_ID.replace("-", "", 1) + "-",
    "",
    "not-a-uuid",
    "\ud800",
]


@given(value=st.uuids())
def test_canonical_ids_are_accepted(value: uuid.UUID) -> None:
    assert is_canonical_id(str(value))
    assert canonical_id("id", str(value)) == str(value)
    upper = str(value).upper()
    assert is_canonical_id(upper) == (upper == str(value))
    assert not is_canonical_id(value)  # the UUID object itself is not the string


@pytest.mark.parametrize("value", NON_CANONICAL_IDS, ids=repr)
def test_other_id_forms_are_invalid_on_write_and_unknown_on_lookup(
    value: str,
) -> None:
    assert not is_canonical_id(value)
    with pytest.raises(InvalidInput) as info:
        tenant_for_write(a_tenant(id=value))
    assert info.value.field == "id"
    with pytest.raises(InvalidInput) as info:
        usage_for_write(a_record(tenant_id=value))
    assert info.value.field == "tenant_id"
    tenants = InMemoryTenantRepository()
    tenants.create(a_tenant())
    with pytest.raises(TenantNotFound):
        tenants.get_by_id(value)
    with pytest.raises(TenantNotFound):
        tenants.delete(value)


def test_is_key_hash() -> None:
    assert is_key_hash(HASH)
    assert not is_key_hash(HASH.upper())
    assert not is_key_hash(HASH[:-1])
    assert not is_key_hash(HASH + "0")
    assert not is_key_hash(HASH.encode())
    assert not is_key_hash(None)


# --- errors -------------------------------------------------------------------------


def test_error_bases() -> None:
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(InvalidInput, TenantStoreError)
    assert issubclass(TenantNotFound, LookupError)
    assert issubclass(TenantNotFound, TenantStoreError)
    with pytest.raises(ValueError, match="budget_usd"):
        money("budget_usd", "abc", CENTS, BUDGET_MAX)
    tenants = InMemoryTenantRepository()
    with pytest.raises(LookupError):
        tenants.get_by_id(TENANT_ID)


def test_invalid_input_carries_field_and_rule() -> None:
    error = InvalidInput("allowed_models[3]", "must not be blank")
    assert error.field == "allowed_models[3]"
    assert error.rule == "must not be blank"
    assert str(error) == "allowed_models[3]: must not be blank"


SECRET_HASH_LIKE = [
    "SECRET" + "a" * 58,
    HASH.upper(),
    HASH[:-1],
    "tsk_" + "x" * 60,
]


@pytest.mark.parametrize("bad_hash", SECRET_HASH_LIKE)
def test_invalid_api_key_hash_message_omits_the_value(bad_hash: str) -> None:
    with pytest.raises(InvalidInput) as info:
        tenant_for_write(a_tenant(api_key_hash=bad_hash))
    assert info.value.field == "api_key_hash"
    for shown in (str(info.value), repr(info.value), info.value.rule):
        assert bad_hash not in shown
        assert bad_hash[:16] not in shown


def test_invalid_api_key_message_omits_the_key() -> None:
    key = generate_api_key()
    other = hash_api_key(generate_api_key())
    with pytest.raises(InvalidInput) as info:
        encrypted_key_for_write(other, TENANT_ID, key, None)
    assert info.value.field == "api_key"
    tenants = InMemoryTenantRepository()
    with pytest.raises(InvalidInput) as through_repo:
        tenants.create(a_tenant(api_key_hash=other), api_key=key)
    assert through_repo.value.field == "api_key"
    for error in (info.value, through_repo.value):
        for shown in (str(error), repr(error), error.rule, *map(str, error.args)):
            assert key not in shown
            assert key[4:20] not in shown
            assert other not in shown
    surrogate_key = "tsk_secret-part-\ud800"
    with pytest.raises(InvalidInput) as bad:
        hash_api_key(surrogate_key)
    assert "secret-part" not in str(bad.value)
    assert "secret-part" not in repr(bad.value)
    assert bad.value.__cause__ is None
    # Raised with no context at all: the encoding error holds the whole key.
    assert bad.value.__context__ is None


def test_tenant_repr_never_shows_the_key_hash() -> None:
    tenant = a_tenant()
    assert HASH not in repr(tenant)
    assert HASH not in str(tenant)
