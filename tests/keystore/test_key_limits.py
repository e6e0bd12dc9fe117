"""The one rule for a key's limits (keystore/key_limits.py), pure, and the two callers held to
it: the store refuses what the key admin core refuses, with the same message."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.admin import check_limits as admin_check_limits
from typegpt_gateway.keystore.key_limits import (
    LAST_EXPIRY,
    LIMIT_FIELDS,
    MAX_BUDGET_USD,
    InvalidLimit,
    check_limit,
    check_limits,
    usd_to_micro,
)
from typegpt_gateway.keystore.sqlite import KeyStore

CATALOG = ("gpt-4o", "o3")
NOW = 1_700_000_000.0

REFUSED = [
    ("rpm", 0),
    ("rpm", -1),
    ("rpm", 2**32),
    ("rpm", True),
    ("rpm", 2.5),
    ("rpm", math.nan),
    ("rpm", math.inf),
    ("tpm", "10"),
    ("max_concurrent", [1]),
    ("budget_tokens", 2**53 + 2),
    ("budget_period", "week"),
    ("budget_period", 1),
    ("models", "gpt-4o"),
    ("models", [" "]),
    ("models", []),
    ("models", [1]),
    ("expires_at", LAST_EXPIRY + 1),
    ("expires_at", math.nan),
    ("expires_at", math.inf),
    ("expires_at", "soon"),
    ("expires_at", True),
]


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_the_rule_refuses_naming_the_limit(field, value):
    with pytest.raises(InvalidLimit) as refused:
        check_limit(field, value)
    assert refused.value.param == field
    assert refused.value.message.startswith(f"'{field}' must ")


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("rpm", 1, 1),
        ("rpm", 60.0, 60),  # a JSON number, through the transcoder
        ("tpm", 2**32 - 1, 2**32 - 1),
        ("max_concurrent", 3, 3),
        ("budget_tokens", 2**53, 2**53),
        ("budget_period", "day", "day"),
        ("budget_period", "month", "month"),
        ("models", ["o3", " gpt-4o", "o3", ""], ("gpt-4o", "o3")),
        ("models", ("o3",), ("o3",)),
        ("expires_at", LAST_EXPIRY, float(LAST_EXPIRY)),
        ("expires_at", NOW - 1, NOW - 1),  # already expired: allowed, and refused on use
    ],
)
def test_the_rule_accepts_and_normalises(field, value, stored):
    checked = check_limit(field, value)
    assert checked == stored and type(checked) is type(stored)


def test_none_lifts_every_limit_and_unknown_ones_are_refused():
    assert check_limits(dict.fromkeys(LIMIT_FIELDS)) == dict.fromkeys(LIMIT_FIELDS)
    with pytest.raises(InvalidLimit) as refused:
        check_limits({"rpm": 1, "key_hash": b"x", "colour": "red"})
    assert (refused.value.param, refused.value.message) == (
        "colour",
        "Unknown limit: colour, key_hash.",
    )
    assert isinstance(refused.value, ValueError)  # what the store raises


# -- its two callers ---------------------------------------------------------------------------


def _as_param(field: str, value: object) -> tuple[str, object]:
    """The admin API's param for a stored field: a lifetime from NOW for expires_at."""
    if field == "expires_at" and isinstance(value, int | float) and not isinstance(value, bool):
        return "expires_in", value - NOW
    return ("expires_in", value) if field == "expires_at" else (field, value)


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_the_store_and_the_admin_core_refuse_alike(field, value, tmp_path):
    with pytest.raises(InvalidLimit) as by_rule:
        check_limit(field, value)
    store = KeyStore(tmp_path / "keys.db")
    try:
        store.create("k")
        with pytest.raises(ValueError) as by_create:
            store.create("other", **{field: value})
        with pytest.raises(ValueError) as by_update:
            store.update("k", **{field: value})
        assert store.records()[0].name == "k" and len(store.records()) == 1
    finally:
        store.close()
    assert str(by_create.value) == str(by_update.value) == by_rule.value.message

    param, given = _as_param(field, value)
    with pytest.raises(GatewayError) as by_admin:
        admin_check_limits({param: given}, CATALOG, NOW)
    assert (by_admin.value.status, by_admin.value.param) == (400, param)
    if param != "expires_in":  # the API's lifetime has messages of its own
        assert by_admin.value.message == by_rule.value.message


def test_the_admin_core_says_expires_in_where_the_rule_says_expires_at():
    with pytest.raises(GatewayError) as refused:
        admin_check_limits({"expires_in": LAST_EXPIRY - NOW + 1}, CATALOG, NOW)
    assert (refused.value.param, refused.value.message) == (
        "expires_in",
        "'expires_in' is too long: keys expire by 2106.",
    )
    assert admin_check_limits({"expires_in": LAST_EXPIRY - NOW}, CATALOG, NOW) == {
        "expires_at": float(LAST_EXPIRY)
    }


def test_the_admin_core_adds_the_catalog_to_the_rule():
    with pytest.raises(GatewayError) as refused:
        admin_check_limits({"models": ["o3", "gpt-9"]}, CATALOG, NOW)
    assert refused.value.param == "models" and "gpt-9" in refused.value.message
    # The store has no catalog: any model name the rule accepts.
    assert check_limit("models", ["gpt-9"]) == ("gpt-9",)


# -- dollar budgets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dollars", "micro"),
    [
        (25, 25_000_000),
        (25.0, 25_000_000),  # a JSON number, through the transcoder
        (0.01, 10_000),
        (0.29, 290_000),  # read as written, not as the double's binary value
        (Decimal("0.000001"), 1),
        (Decimal("12.345678"), 12_345_678),
        (MAX_BUDGET_USD, MAX_BUDGET_USD * 1_000_000),
    ],
)
def test_dollars_become_whole_micro_dollars_exactly(dollars, micro):
    converted = usd_to_micro(dollars)
    assert converted == micro and type(converted) is int
    assert check_limit("budget_usd_micro", converted) == micro


@pytest.mark.parametrize(
    "dollars",
    [0, -1, 0.0000001, Decimal("1.0000001"), math.nan, math.inf, True, "25", None,
     MAX_BUDGET_USD + 1],
)  # fmt: skip
def test_dollars_that_are_no_budget_are_refused(dollars):
    with pytest.raises(InvalidLimit) as refused:
        usd_to_micro(dollars)
    assert refused.value.param == "budget_usd"
    assert refused.value.message.startswith("'budget_usd' must be an amount of dollars")


def test_the_store_holds_dollar_budgets_in_micro_dollars_with_a_period(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    try:
        record, _ = store.create("k", budget_usd_micro=25_000_000)
        assert (record.budget_usd_micro, record.budget_period) == (25_000_000, "month")
        assert store.get("k") == record
        updated = store.update("k", budget_usd_micro=None, budget_tokens=10)
        assert (updated.budget_usd_micro, updated.budget_tokens) == (None, 10)
        with pytest.raises(ValueError, match="budget_usd_micro"):
            store.update("k", budget_usd_micro=0)
    finally:
        store.close()
