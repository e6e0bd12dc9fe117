"""The limits a key carries, and the one rule for their values: what a store writes and what
the key admin core accepts from an operator (the admin API, the `keys` CLI), with the bounds
the admin API documents. Pure.

The admin core speaks the API's params (a lifetime, `expires_in`, where the store has a time,
`expires_at`) and checks model names against the catalog; it translates, then applies this
rule, as the store does to every write."""

from __future__ import annotations

import math
from collections.abc import Mapping

# The limits a store holds and `update` may change; None lifts one (unlimited, all models,
# never expires).
LIMIT_FIELDS = (
    "models",
    "rpm",
    "tpm",
    "max_concurrent",
    "budget_tokens",
    "budget_period",
    "expires_at",
)
# Limits set as whole numbers of at least 1, up to what the admin API's JSON can carry
# exactly (uint32 fields; budget_tokens is a double, exact to 2^53).
COUNT_LIMITS = ("rpm", "tpm", "max_concurrent", "budget_tokens")
_MAX_COUNTS = {"budget_tokens": 2**53}
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
    if field in COUNT_LIMITS:
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
