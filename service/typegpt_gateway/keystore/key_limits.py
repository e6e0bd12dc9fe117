"""The limits a key carries, and the one rule for their values: what a store writes and what
the key admin core accepts from an operator (the admin API, the `keys` CLI), with the bounds
the admin API documents. Pure.

The admin core speaks the API's params (a lifetime, `expires_in`, where the store has a time,
`expires_at`) and checks model names against the catalog; it translates, then applies this
rule, as the store does to every write."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal

# The limits a store holds and `update` may change; None lifts one (unlimited, all models,
# never expires).
LIMIT_FIELDS = (
    "models",
    "rpm",
    "tpm",
    "max_concurrent",
    "budget_tokens",
    "budget_period",
    "budget_usd_micro",
    "expires_at",
)
# The budgets a period applies to: a key with either has a period (monthly unless said).
BUDGETS = ("budget_tokens", "budget_usd_micro")
MICRO_USD = 1_000_000  # micro-dollars in a dollar
# The largest dollar budget: its micro-dollars stay exact in the admin API's JSON doubles, in
# Redis's Lua numbers and in 64-bit columns (2^53 micro-dollars is about 9 billion dollars).
MAX_BUDGET_USD = 1_000_000_000
# Limits set as whole numbers of at least 1, up to what the admin API's JSON can carry
# exactly (uint32 fields; budget_tokens is a double, exact to 2^53).
COUNT_LIMITS = ("rpm", "tpm", "max_concurrent", "budget_tokens")
_MAX_COUNTS = {"budget_tokens": 2**53, "budget_usd_micro": MAX_BUDGET_USD * MICRO_USD}
_MAX_COUNT = 2**32 - 1
BUDGET_PERIODS = ("day", "month")
# The last expiry time the admin API's uint32 Unix seconds can carry (2106-02-07): a later
# one would be stored, then fail every answer that shows the record.
LAST_EXPIRY = 2**32 - 1


class InvalidLimit(ValueError):
    """A limit the rule refuses: `param` names it, the message says what it must be."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def check_limits(limits: Mapping[str, object]) -> dict[str, object]:
    """The values to store for `limits` (LIMIT_FIELDS; None lifts a limit), in their stored
    form, or InvalidLimit for the first one refused."""
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise InvalidLimit(f"Unknown limit: {', '.join(sorted(unknown))}.", sorted(unknown)[0])
    return {field: check_limit(field, value) for field, value in limits.items()}


def check_limit(field: str, value: object) -> object:
    """One limit's value, normalised (a count as an int, models sorted and unique), or
    InvalidLimit; None, which lifts any limit, passes."""
    if value is None:
        return None
    if field == "models":
        return _models(value)
    if field == "budget_period":
        return _budget_period(value)
    if field == "expires_at":
        return _expiry(value)
    if field in (*COUNT_LIMITS, "budget_usd_micro"):
        return _count(field, value)
    raise InvalidLimit(f"Unknown limit: {field}.", field)


def _count(field: str, value: object) -> int:
    most = _MAX_COUNTS.get(field, _MAX_COUNT)
    # bool is an int in Python; JSON numbers arrive as floats (60.0) through the transcoder.
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value != int(value)
        or not 1 <= value <= most
    ):
        raise InvalidLimit(f"'{field}' must be a whole number from 1 to {most}.", field)
    return int(value)


def _models(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(m, str) for m in value):
        raise InvalidLimit(
            "'models' must be a list of model names (null for all models).", "models"
        )
    wanted = tuple(sorted({model.strip() for model in value if model.strip()}))
    if not wanted:
        raise InvalidLimit("'models' must name at least one model (null for all models).", "models")
    return wanted


def _budget_period(value: object) -> str:
    if value not in BUDGET_PERIODS:
        raise InvalidLimit(
            f"'budget_period' must be one of {', '.join(BUDGET_PERIODS)}.", "budget_period"
        )
    return str(value)


def _expiry(value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not value <= LAST_EXPIRY
    ):
        raise InvalidLimit(
            f"'expires_at' must be a Unix time by {LAST_EXPIRY} (2106-02-07).", "expires_at"
        )
    return float(value)


def usd_to_micro(value: object, param: str = "budget_usd") -> int:
    """A dollar amount (a number; the CLI's text comes as a Decimal) in whole micro-dollars,
    or InvalidLimit: from one micro-dollar to MAX_BUDGET_USD, no finer than a micro-dollar.
    Exact: a JSON number such as 0.29 is read as the decimal it was written as."""
    amount: Decimal | None = None
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # repr is the shortest text that reads back as the same double: what the client wrote.
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    micro = amount * MICRO_USD if amount is not None and amount.is_finite() else None
    if (
        micro is None
        or micro != micro.to_integral_value()
        or not 1 <= micro <= (MAX_BUDGET_USD * MICRO_USD)
    ):
        raise InvalidLimit(
            f"'{param}' must be an amount of dollars from 0.000001 to {MAX_BUDGET_USD}, "
            "in whole micro-dollars (at most 6 decimal places).",
            param,
        )
    return int(micro)


def micro_to_usd(micro: int) -> float:
    """Micro-dollars as the API's dollars (a double: exact to the micro-dollar up to 2^53)."""
    return micro / MICRO_USD
