"""The SQL both key stores share (SqlStore): SQLite (`sqlite`) and PostgreSQL (`postgres`)
subclass it, connect, and supply their dialect's few differences. The SQL below is what both
dialects accept alike."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from .key_limits import BUDGETS, LIMIT_FIELDS, check_limits
from .records import SHOWN_PREFIX_CHARS, KeyRecord, hash_key, new_key
from .schema import Dialect, migrate
from .store import (
    USAGE_GROUPS,
    KeyActivity,
    KeyExistsError,
    KeyNotFoundError,
    PeriodUse,
    StoreBusyError,
    UsageGroup,
    UsageRow,
    UsageTotal,
)

logger = logging.getLogger(__name__)

# How long a call waits for a lock another connection holds (SQLite's busy timeout,
# PostgreSQL's lock_timeout). Other writers hold theirs for milliseconds (a CLI command, another
# replica's ledger write); a wait this long means a stuck transaction, and the store's one
# connection must not stay held behind it.
LOCK_WAIT = 5.0
# The ledger's counters, in UsageRow's order after day and model: each row adds to them.
_COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "cost_micro_usd",
    "unpriced_requests",
    "estimated_requests",
)
# Only the constant names above are formatted into these; every value is a parameter.
_SELECT_USAGE = (
    f"SELECT day, model, {', '.join(_COUNTERS)} FROM usage "  # noqa: S608
    "WHERE key_name = ? AND day >= ? ORDER BY day, model"
)
# The usage table's column for each group of the whole gateway's totals.
_GROUP_COLUMNS: dict[UsageGroup, str] = {"day": "day", "key": "key_name", "model": "model"}
_ADD_USAGE = (
    f"INSERT INTO usage (key_name, day, model, {', '.join(_COUNTERS)}) "  # noqa: S608
    f"VALUES (?, ?, ?, {', '.join('?' * len(_COUNTERS))}) "
    "ON CONFLICT (key_name, day, model) DO UPDATE SET "
    + ", ".join(f"{name} = usage.{name} + excluded.{name}" for name in _COUNTERS)
)
# How long the store remembers a usage batch's id. A batch is retried only by the process that
# made it and only while its store fails: a week is far beyond that, and the table stays small
# (an id per flush interval per replica while requests come in).
BATCH_ID_RETENTION = 7 * 24 * 3600.0


def usage_totals_query(
    group_by: Sequence[UsageGroup],
    since: dt.date | None,
    until: dt.date | None,
    key: str | None,
) -> tuple[str, list[str]]:
    """SqlStore.usage_totals' one GROUP BY query and its parameters: the grouped columns in
    USAGE_GROUPS' order, then the sums of _COUNTERS. (bench/usage_query.py explains and times
    it.)

    Without `key` it reads the days' range through the usage_day index (migration 0002); with
    `key`, through the primary key (key_name, day, model): that name's rows of those days."""
    grouped = [group for group in USAGE_GROUPS if group in group_by]
    if not grouped:
        raise ValueError("usage totals need at least one of day, key, model to group by")
    columns = ", ".join(_GROUP_COLUMNS[group] for group in grouped)
    # Days bounded on both sides or not at all. Without bounds, an index would only add a
    # lookup per row; with `day >= ?` alone, SQLite's planner (which has no statistics) takes
    # the range for most of the table and scans all of it in primary key order.
    if since is not None or until is not None:
        since, until = since or dt.date.min, until or dt.date.max
    bounds = {"key_name = ?": key, "day >= ?": since, "day <= ?": until}
    conditions = [condition for condition, value in bounds.items() if value is not None]
    params = [
        value.isoformat() if isinstance(value, dt.date) else value
        for value in bounds.values()
        if value is not None
    ]
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    sums = ", ".join(f"SUM({name})" for name in _COUNTERS)
    # Only constant names (_GROUP_COLUMNS, _COUNTERS, the bounds) are formatted in; values are
    # parameters.
    sql = (
        f"SELECT {columns}, {sums} FROM usage {where}"  # noqa: S608
        f"GROUP BY {columns} ORDER BY {columns}"
    )
    return sql, params


def key_activity_query(starts: Mapping[str, dt.date], name: str | None) -> tuple[str, list[str]]:
    """SqlStore.key_activity's one query and its parameters: per key name, its last day, then
    the tokens and cost since each start, in the order of `starts`.

    The names come from keys; for each, the primary key (key_name, day, model) gives its last
    day (a seek to the end of its range) and its rows since the earliest start (a range of
    it), so that the query reads those rows alone, however long the ledger. (PostgreSQL's
    planner may read the same days through usage_day instead, and join.)"""
    if not starts:
        raise ValueError("key activity needs at least one period start")
    days = [day.isoformat() for day in starts.values()]
    sums = ", ".join(
        "SUM(CASE WHEN u.day >= ? THEN u.prompt_tokens + u.completion_tokens ELSE 0 END), "
        "SUM(CASE WHEN u.day >= ? THEN u.cost_micro_usd ELSE 0 END)"
        for _ in days
    )
    one_name = "WHERE name = ? " if name else ""
    # Only constant text is formatted in; every value is a parameter.
    sql = (
        "SELECT names.name, "  # noqa: S608
        f"(SELECT MAX(day) FROM usage WHERE key_name = names.name), {sums} "
        f"FROM (SELECT DISTINCT name FROM keys {one_name}) AS names "
        "LEFT JOIN usage AS u ON u.key_name = names.name AND u.day >= ? "
        "GROUP BY names.name"
    )
    params = [*(day for day in days for _ in range(2)), *([name] if name else []), min(days)]
    return sql, params


_FIELDS = ("name", "key_hash", "prefix", "created_at", *LIMIT_FIELDS, "revoked_at")
_COLUMNS = ", ".join(_FIELDS)


def _record(row: tuple[Any, ...]) -> KeyRecord:
    values = dict(zip(_FIELDS, row, strict=True))
    models = values.pop("models")
    values["key_hash"] = bytes(values["key_hash"])
    return KeyRecord(**values, models=tuple(json.loads(models)) if models is not None else None)


def _stored(limits: Mapping[str, Any]) -> dict[str, Any]:
    """The columns' values for `limits`, which the limit rule must accept (else InvalidLimit,
    a ValueError)."""
    values = check_limits(limits)
    models = values.get("models")
    if isinstance(models, tuple):  # None, else the rule's tuple of names
        values["models"] = json.dumps(list(models))
    return values


class SqlStore:
    """The stores' shared logic; subclasses connect and supply the dialect's few differences."""

    _dialect: ClassVar[Dialect]
    _integrity_errors: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        # One connection, used by the event loop's worker threads one at a time: a
        # transaction must not interleave with another thread's statements.
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The connection, for one call (calls nest: `update` reads through `get`). Waiting
        longer than LOCK_WAIT for it fails the call: behind a stuck call, every other one (the
        ledger, budget reads, key refresh, the admin API) would queue, each holding a thread."""
        if not self._lock.acquire(timeout=LOCK_WAIT):
            raise StoreBusyError(f"the key store was busy with another call for {LOCK_WAIT:g} s")
        try:
            yield
        finally:
            self._lock.release()

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def _migrate(self) -> None:
        """Brings the database to the schema this code knows (`schema`), once, whoever else
        opens it at the same moment; called by the subclass once connected."""
        with self._locked(), self._transaction():
            found, latest = migrate(self._execute, self._dialect)
        if found != latest and found != 0:  # 0: a new database, made at `latest`
            logger.info(
                "key store schema upgraded from %s to version %d",
                "a release before versions" if found is None else f"version {found}",
                latest,
            )

    def _changed(self) -> None:
        """Called inside each write to keys, so that `data_version` moves."""

    def close(self) -> None:
        raise NotImplementedError

    def data_version(self) -> int:
        raise NotImplementedError

    def create(
        self, name: str, *, expires_in: float | None = None, **limits: Any
    ) -> tuple[KeyRecord, str]:
        """Stores a new key with `limits` (LIMIT_FIELDS; unset is unlimited) and returns its
        record and the key itself, which is never stored. A budget (tokens or dollars) is
        monthly unless said."""
        if not name.strip():
            raise ValueError("a key needs a name")
        budgeted = any(limits.get(budget) is not None for budget in BUDGETS)
        if budgeted and limits.get("budget_period") is None:
            limits["budget_period"] = "month"
        limits = {field: None for field in LIMIT_FIELDS} | limits
        now = time.time()
        if expires_in is not None:
            limits["expires_at"] = now + expires_in
        row = _stored(limits)
        key = new_key()
        row |= {
            "name": name,
            "key_hash": hash_key(key),
            "prefix": key[:SHOWN_PREFIX_CHARS],
            "created_at": now,
            "revoked_at": None,
        }
        placeholders = ", ".join("?" for _ in _FIELDS)
        try:
            with self._locked(), self._transaction():
                self._execute(
                    f"INSERT INTO keys ({_COLUMNS}) VALUES ({placeholders})",  # noqa: S608
                    [row[field] for field in _FIELDS],
                )
                self._changed()
        except self._integrity_errors as exc:
            raise KeyExistsError(f"a live key named {name!r} already exists") from exc
        return _record(tuple(row[field] for field in _FIELDS)), key

    def revoke(self, name: str) -> None:
        with self._locked(), self._transaction():
            cursor = self._execute(
                "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            if cursor.rowcount == 0:
                raise KeyNotFoundError(f"no live key named {name!r}")
            self._changed()

    def get(self, name: str) -> KeyRecord:
        """The live key of that name."""
        with self._locked():
            row = self._execute(
                f"SELECT {_COLUMNS} FROM keys WHERE name = ? AND revoked_at IS NULL",  # noqa: S608
                (name,),
            ).fetchone()
        if row is None:
            raise KeyNotFoundError(f"no live key named {name!r}")
        return _record(row)

    def update(self, name: str, **limits: Any) -> KeyRecord:
        """Changes limits of the live key `name` in place (its key stays the same); None
        clears one. A budget without a period is monthly."""
        values = _stored(limits)
        with self._locked(), self._transaction():
            current = self.get(name)
            budgeted = any(values.get(budget) is not None for budget in BUDGETS)
            if budgeted and "budget_period" not in values:
                values["budget_period"] = current.budget_period or "month"
            if values:
                assignments = ", ".join(f"{field} = ?" for field in values)
                self._execute(
                    f"UPDATE keys SET {assignments} WHERE name = ? AND revoked_at IS NULL",  # noqa: S608
                    [*values.values(), name],
                )
                self._changed()
            return self.get(name)

    def records(self) -> list[KeyRecord]:
        with self._locked():
            rows = self._execute(
                f"SELECT {_COLUMNS} FROM keys ORDER BY created_at, id"  # noqa: S608
            ).fetchall()
        return [_record(row) for row in rows]

    def by_hash(self) -> dict[bytes, KeyRecord]:
        return {record.key_hash: record for record in self.records()}

    def usage(self, name: str, since: dt.date | None = None) -> list[UsageRow]:
        """The ledger of key `name` (every key that had the name), oldest day first."""
        with self._locked():
            rows = self._execute(
                _SELECT_USAGE,
                (name, (since or dt.date.min).isoformat()),
            ).fetchall()
        return [UsageRow(dt.date.fromisoformat(day), *rest) for day, *rest in rows]

    def usage_totals(
        self,
        group_by: Sequence[UsageGroup],
        since: dt.date | None = None,
        until: dt.date | None = None,
        key: str | None = None,
    ) -> list[UsageTotal]:
        """The ledger's counters summed per `group_by` (day, key and/or model) over the days
        from `since` to `until` (both included; None: no bound), for one key name or all,
        ordered by day, key, model (usage_totals_query)."""
        grouped = [group for group in USAGE_GROUPS if group in group_by]
        sql, params = usage_totals_query(grouped, since, until, key)
        with self._locked():
            rows = self._execute(sql, params).fetchall()
        totals = []
        for row in rows:
            named = dict(zip(grouped, row, strict=False))
            day = named.get("day")
            totals.append(
                UsageTotal(
                    dt.date.fromisoformat(day) if day is not None else None,
                    named.get("key"),
                    named.get("model"),
                    # PostgreSQL's SUM of bigints is a numeric (a Decimal here).
                    *(int(count) for count in row[len(grouped) :]),
                )
            )
        return totals

    def key_activity(
        self, starts: Mapping[str, dt.date], name: str | None = None
    ) -> dict[str, KeyActivity]:
        """For every key name (or the one `name`) the ledger has a request of: its last day,
        and its tokens and known cost since each of `starts` (e.g. the first day of the
        current budget day and month), in one query for all names, not one per name
        (key_activity_query)."""
        sql, params = key_activity_query(starts, name)
        with self._locked():
            rows = self._execute(sql, params).fetchall()
        activity = {}
        for key_name, last_day, *counts in rows:
            if last_day is None:
                continue
            used = {
                period: PeriodUse(int(counts[2 * i] or 0), int(counts[2 * i + 1] or 0))
                for i, period in enumerate(starts)
            }
            activity[key_name] = KeyActivity(dt.date.fromisoformat(last_day), used)
        return activity

    def add_usage(
        self, entries: Iterable[tuple[str, UsageRow]], *, batch_id: str | None = None
    ) -> bool:
        """Adds the counts to the ledger, all or nothing. With a `batch_id`, only once: False
        (and nothing added) when a batch of that id was already written."""
        rows = [
            (
                name,
                row.day.isoformat(),
                row.model,
                row.requests,
                row.prompt_tokens,
                row.completion_tokens,
                row.errors,
                row.cost_micro_usd,
                row.unpriced_requests,
                row.estimated_requests,
            )
            for name, row in entries
        ]
        if not rows:
            return True
        with self._locked(), self._transaction():
            if batch_id is not None:
                now = time.time()
                recorded = self._execute(
                    "INSERT INTO ledger_batches (id, written_at) VALUES (?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (batch_id, now),
                )
                if recorded.rowcount == 0:
                    return False
                self._execute(
                    "DELETE FROM ledger_batches WHERE written_at < ?", (now - BATCH_ID_RETENTION,)
                )
            self._executemany(
                _ADD_USAGE,
                rows,
            )
        return True
