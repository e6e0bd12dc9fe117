"""The key store's interface, whatever the database behind it (`sqlite`, `postgres`): what the
gateway and the CLI call, the rows of the usage ledger, and the errors a store raises."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .records import KeyRecord


class KeyExistsError(Exception):
    pass


class KeyNotFoundError(Exception):
    pass


class StoreBusyError(TimeoutError):
    """Another call has held the store's connection for longer than LOCK_WAIT."""


class BackupUnsupportedError(Exception):
    """This store is backed up with its database server's own tools."""


class SchemaTooNewError(Exception):
    """The database was upgraded by a newer release: its schema is past what this one knows."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One key's use of one model on one UTC day."""

    day: dt.date
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    # Micro-dollars, summed over the requests whose model had a price.
    cost_micro_usd: int = 0
    # Requests whose model had no price: their cost is unknown, not 0.
    unpriced_requests: int = 0
    # Requests whose usage the gateway estimated (the upstream never reported it).
    estimated_requests: int = 0


UsageGroup = Literal["day", "key", "model"]
# What the whole gateway's usage can be totalled per, in the order its totals are sorted.
USAGE_GROUPS: tuple[UsageGroup, ...] = ("day", "key", "model")


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """The ledger's counters summed over one group: `day`, `key` and `model` are set when the
    totals are per that, else None."""

    day: dt.date | None
    key: str | None
    model: str | None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost_micro_usd: int = 0
    unpriced_requests: int = 0
    estimated_requests: int = 0


@dataclass(frozen=True, slots=True)
class PeriodUse:
    """A key name's tokens (prompt + completion) and known cost since a period's first day."""

    tokens: int = 0
    cost_micro_usd: int = 0


@dataclass(frozen=True, slots=True)
class KeyActivity:
    """What the ledger has of one key name: the last day it has a request on (None: none),
    and its use since each of the days asked for, by their names."""

    last_day: dt.date | None = None
    used: Mapping[str, PeriodUse] = field(default_factory=dict)


class Store(Protocol):
    """What the gateway and the CLI need from a key store."""

    def create(
        self, name: str, *, expires_in: float | None = None, **limits: Any
    ) -> tuple[KeyRecord, str]: ...
    def revoke(self, name: str) -> None: ...
    def get(self, name: str) -> KeyRecord: ...
    def update(self, name: str, **limits: Any) -> KeyRecord: ...
    def records(self) -> list[KeyRecord]: ...
    def by_hash(self) -> dict[bytes, KeyRecord]: ...
    def data_version(self) -> int: ...
    def usage(self, name: str, since: dt.date | None = None) -> list[UsageRow]: ...
    def usage_totals(
        self,
        group_by: Sequence[UsageGroup],
        since: dt.date | None = None,
        until: dt.date | None = None,
        key: str | None = None,
    ) -> list[UsageTotal]: ...
    def key_activity(
        self, starts: Mapping[str, dt.date], name: str | None = None
    ) -> dict[str, KeyActivity]: ...
    def add_usage(
        self, entries: Iterable[tuple[str, UsageRow]], *, batch_id: str | None = None
    ) -> bool: ...
    def backup(self, destination: Path) -> None: ...
    def close(self) -> None: ...
