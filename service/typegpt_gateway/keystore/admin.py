"""Key administration: the one core behind the `keys` CLI and the KeyService admin API.

It checks what an operator asks for (names, models, limits, lifetimes) and applies it to the
key store. Both front ends only translate their inputs and outputs; every rule lives here, or
below it where the store applies it too (the limits' values: key_limits), and fails with a
GatewayError (400 with the offending `param`, 404, 409) that each front end shows its own way.
"""

from __future__ import annotations

import builtins
import datetime as dt
import re
import time
from collections.abc import Collection, Mapping

from ..errors import GatewayError, invalid_request
from ..ops.observe import UNKNOWN_MODEL
from .key_limits import LIMIT_FIELDS, InvalidLimit, check_limit, usd_to_micro
from .records import KeyRecord, parse_duration
from .store import (
    USAGE_GROUPS,
    KeyActivity,
    KeyExistsError,
    KeyNotFoundError,
    Store,
    UsageGroup,
    UsageRow,
    UsageTotal,
)

# A name travels in admin URLs (/v1/admin/keys/{name}), metrics labels and log lines.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")
# The key name the admin key's requests are logged and counted under.
ADMIN = "admin"
# Names the logs and metrics already give a meaning (UNKNOWN_MODEL: the model label of any
# name the catalog lacks): a client key named so would pass for them. Reserved in any case,
# since a reader of a dashboard does not tell "Admin" from "admin".
RESERVED_NAMES = frozenset({ADMIN, UNKNOWN_MODEL})
# What create and update accept: the stored limits, with a lifetime instead of a date and
# dollars instead of micro-dollars.
_PARAM_OF = {"expires_at": "expires_in", "budget_usd_micro": "budget_usd"}
_FIELD_OF = {param: field for field, param in _PARAM_OF.items()}
LIMIT_PARAMS = tuple(_PARAM_OF.get(field, field) for field in LIMIT_FIELDS)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise invalid_request(
            "A key name is 1-64 characters: letters, digits and . _ @ : - "
            "(starting with a letter or digit).",
            "name",
        )
    if name.lower() in RESERVED_NAMES:
        raise invalid_request(
            f"The key name {name!r} is reserved (the logs and metrics use "
            f"{' and '.join(sorted(RESERVED_NAMES))} themselves); pick another name.",
            "name",
        )
    return name


def check_models(models: tuple[str, ...], catalog: Collection[str]) -> tuple[str, ...]:
    """`models` (as the limit rule gave them), if the catalog has each."""
    unknown = [model for model in models if model not in catalog]
    if unknown:
        raise invalid_request(f"Not in the model catalog: {', '.join(unknown)}.", "models")
    return models


def lifetime_seconds(value: object) -> float:
    """'30d', '12h', '90m', '45s', '2w', or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise invalid_request("'expires_in' must be positive.", "expires_in")
        return float(value)
    if isinstance(value, str):
        try:
            return float(parse_duration(value))
        except ValueError as exc:
            raise invalid_request(f"'expires_in': {exc}.", "expires_in") from None
    raise invalid_request(
        "'expires_in' must be a duration such as 30d or a number of seconds.", "expires_in"
    )


def check_limits(
    limits: Mapping[str, object], catalog: Collection[str], now: float
) -> dict[str, object]:
    """The store's fields for the given limits (a None value removes that limit): the limit
    rule (key_limits) on each, after the lifetime becomes a time, and models in the catalog.
    Pure."""
    unknown = set(limits) - set(LIMIT_PARAMS)
    if unknown:
        raise invalid_request(f"Unknown limit: {', '.join(sorted(unknown))}.", sorted(unknown)[0])
    fields: dict[str, object] = {}
    for param, value in limits.items():
        field = _FIELD_OF.get(param, param)
        try:
            if value is not None and param == "expires_in":
                value = now + lifetime_seconds(value)
            elif value is not None and param == "budget_usd":
                value = usd_to_micro(value)
            fields[field] = checked = check_limit(field, value)
        except InvalidLimit as refused:
            if field == "expires_at":
                raise invalid_request(
                    "'expires_in' is too long: keys expire by 2106.", param
                ) from None
            raise invalid_request(refused.message, refused.param) from None
        if field == "models" and isinstance(checked, tuple):
            check_models(checked, catalog)
    return fields


def parse_day(text: str, param: str = "since") -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise invalid_request(f"'{param}' must be a date such as 2025-01-31.", param) from None


def parse_group_by(text: str) -> tuple[UsageGroup, ...]:
    """A comma-separated list of day, key and model, each at most once, in the order given
    (the answer echoes it); empty: day."""
    if not text.strip():
        return ("day",)
    groups: list[UsageGroup] = []
    for item in text.split(","):
        group = next((known for known in USAGE_GROUPS if known == item.strip()), None)
        if group is None or group in groups:
            raise invalid_request(
                f"'group_by' is a comma-separated list of {', '.join(USAGE_GROUPS)}, each at "
                f"most once; got {text!r}.",
                "group_by",
            )
        groups.append(group)
    return tuple(groups)


def _not_found(name: str, live: bool = False) -> GatewayError:
    which = "live key" if live else "key"
    return GatewayError(404, f"There is no {which} named {name!r}.", param="name")


class KeyAdmin:
    """Key operations on one store, checked against the model catalog. Blocking (SQLite or
    PostgreSQL): the server calls it from a worker thread."""

    def __init__(self, store: Store, catalog: Collection[str]) -> None:
        self.store = store
        self._catalog = catalog

    def create(self, name: str, limits: Mapping[str, object]) -> tuple[KeyRecord, str]:
        """The new record and the key itself, which is shown once and never stored."""
        check_name(name)
        now = time.time()
        fields = check_limits(limits, self._catalog, now)
        expires_at = fields.pop("expires_at", None)
        lifetime = expires_at - now if isinstance(expires_at, float) else None
        try:
            return self.store.create(name, expires_in=lifetime, **fields)
        except KeyExistsError:
            raise GatewayError(
                409,
                f"A live key named {name!r} already exists; revoke it first or pick another name.",
                "invalid_request_error",
                "name",
            ) from None

    def list(self) -> list[KeyRecord]:
        return self.store.records()

    def get(self, name: str) -> KeyRecord:
        """The live key of that name, else the last one revoked."""
        try:
            return self.store.get(name)
        except KeyNotFoundError:
            pass
        revoked = [record for record in self.store.records() if record.name == name]
        if not revoked:
            raise _not_found(name)
        return revoked[-1]  # records() is oldest first

    def update(self, name: str, limits: Mapping[str, object]) -> KeyRecord:
        fields = check_limits(limits, self._catalog, time.time())
        try:
            return self.store.update(name, **fields)
        except KeyNotFoundError:
            raise _not_found(name, live=True) from None

    def revoke(self, name: str) -> KeyRecord:
        try:
            self.store.revoke(name)
        except KeyNotFoundError:
            raise _not_found(name, live=True) from None
        return self.get(name)

    def activity(
        self, starts: Mapping[str, dt.date], name: str | None = None
    ) -> dict[str, KeyActivity]:
        """Each key name's last day in the ledger and its use since each of `starts`, for every
        name in one query (or for `name`)."""
        return self.store.key_activity(starts, name)

    def usage(self, name: str, since: dt.date | None = None) -> builtins.list[UsageRow]:
        self.get(name)  # 404 for a name that never existed
        return self.store.usage(name, since)

    def usage_totals(
        self, group_by: str, since: str, until: str, key: str
    ) -> tuple[tuple[UsageGroup, ...], builtins.list[UsageTotal]]:
        """The whole gateway's totals, from the admin API's parameters as given (empty: the
        default): the groups asked for, and their totals. A `key` no ledger row has is no
        error: its totals are empty."""
        groups = parse_group_by(group_by)
        first = parse_day(since, "since") if since else None
        last = parse_day(until, "until") if until else None
        if first is not None and last is not None and last < first:
            raise invalid_request("'until' must not be before 'since'.", "until")
        return groups, self.store.usage_totals(groups, first, last, key or None)
