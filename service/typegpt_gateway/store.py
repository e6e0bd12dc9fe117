"""The SQLite key store, shared by the CLI and the running server through the file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import GatewayError
from .keys import SHOWN_PREFIX_CHARS, KeyRecord, authenticate, hash_key, new_key

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash BLOB NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    models TEXT,
    rpm INTEGER,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    tpm INTEGER,
    max_concurrent INTEGER,
    budget_tokens INTEGER,
    budget_period TEXT
);
-- A name may be reused once its key is revoked, never while it is live.
CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys(name) WHERE revoked_at IS NULL;
"""
_COLUMNS = (
    "name, key_hash, prefix, created_at, models, rpm, expires_at, revoked_at, "
    "tpm, max_concurrent, budget_tokens, budget_period"
)
# Columns added after the first release, with their types: `_migrate` adds them to old stores.
_ADDED_COLUMNS = {
    "tpm": "INTEGER",
    "max_concurrent": "INTEGER",
    "budget_tokens": "INTEGER",
    "budget_period": "TEXT",
}
# What `update` may change; `models` is stored as JSON.
LIMIT_FIELDS = (
    "models",
    "rpm",
    "tpm",
    "max_concurrent",
    "budget_tokens",
    "budget_period",
    "expires_at",
)


class KeyExistsError(Exception):
    pass


class KeyNotFoundError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One key's use of one model on one UTC day."""

    day: dt.date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int


def _record(row: tuple) -> KeyRecord:
    (name, key_hash, prefix, created_at, models, rpm, expires_at, revoked_at, *limits) = row
    tpm, max_concurrent, budget_tokens, budget_period = limits
    return KeyRecord(
        name=name,
        key_hash=bytes(key_hash),
        prefix=prefix,
        created_at=created_at,
        models=tuple(json.loads(models)) if models is not None else None,
        rpm=rpm,
        expires_at=expires_at,
        revoked_at=revoked_at,
        tpm=tpm,
        max_concurrent=max_concurrent,
        budget_tokens=budget_tokens,
        budget_period=budget_period,
    )


def _models_json(models: Iterable[str] | None) -> str | None:
    return json.dumps(sorted(set(models))) if models is not None else None


class KeyStore:
    def __init__(self, path: Path) -> None:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # The server reads from a worker thread; every write is its own transaction.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(keys)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE keys ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._db.close()

    def create(
        self,
        name: str,
        *,
        models: Iterable[str] | None = None,
        rpm: int | None = None,
        expires_in: float | None = None,
        tpm: int | None = None,
        max_concurrent: int | None = None,
        budget_tokens: int | None = None,
        budget_period: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Stores a new key and returns its record and the key itself, which is never stored."""
        if not name.strip():
            raise ValueError("a key needs a name")
        key = new_key()
        now = time.time()
        model_list = sorted(set(models)) if models is not None else None
        record = KeyRecord(
            name=name,
            key_hash=hash_key(key),
            prefix=key[:SHOWN_PREFIX_CHARS],
            created_at=now,
            models=tuple(model_list) if model_list is not None else None,
            rpm=rpm,
            expires_at=now + expires_in if expires_in is not None else None,
            tpm=tpm,
            max_concurrent=max_concurrent,
            budget_tokens=budget_tokens,
            budget_period=budget_period,
        )
        try:
            self._db.execute(
                f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    record.name,
                    record.key_hash,
                    record.prefix,
                    record.created_at,
                    json.dumps(model_list) if model_list is not None else None,
                    record.rpm,
                    record.expires_at,
                    None,
                    record.tpm,
                    record.max_concurrent,
                    record.budget_tokens,
                    record.budget_period,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise KeyExistsError(f"a live key named {name!r} already exists") from exc
        return record, key

    def revoke(self, name: str) -> None:
        cursor = self._db.execute(
            "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
            (time.time(), name),
        )
        if cursor.rowcount == 0:
            raise KeyNotFoundError(f"no live key named {name!r}")

    def get(self, name: str) -> KeyRecord:
        """The live key of that name, else the last revoked one."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM keys WHERE name = ? "  # noqa: S608
            "ORDER BY revoked_at IS NULL DESC, id DESC LIMIT 1",
            (name,),
        ).fetchone()
        if row is None:
            raise KeyNotFoundError(f"no key named {name!r}")
        return _record(row)

    def update(self, name: str, **limits: object) -> KeyRecord:
        """Sets the given limits of the live key of that name; None removes a limit."""
        unknown = set(limits) - set(LIMIT_FIELDS)
        if unknown:
            raise TypeError(f"not a limit: {', '.join(sorted(unknown))}")
        if "models" in limits:
            limits["models"] = _models_json(limits["models"])  # type: ignore[arg-type]
        if limits:
            # Column names come from LIMIT_FIELDS only; the values are bound parameters.
            assignments = ", ".join(f"{column} = ?" for column in limits)
            cursor = self._db.execute(
                f"UPDATE keys SET {assignments} WHERE name = ? AND revoked_at IS NULL",  # noqa: S608
                (*limits.values(), name),
            )
            if cursor.rowcount == 0:
                raise KeyNotFoundError(f"no live key named {name!r}")
        record = self.get(name)
        if record.revoked_at is not None:
            raise KeyNotFoundError(f"no live key named {name!r}")
        return record

    def usage(self, name: str, since: dt.date | None = None) -> list[UsageRow]:
        """Per day and model, oldest first. The usage ledger comes with the rate-limit work;
        until then nothing is recorded."""
        return []

    def records(self) -> list[KeyRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created_at, id")  # noqa: S608
        return [_record(row) for row in rows]

    def by_hash(self) -> dict[bytes, KeyRecord]:
        return {record.key_hash: record for record in self.records()}

    def backup(self, destination: Path) -> None:
        """A consistent copy through SQLite's online backup: safe while the gateway runs."""
        with contextlib.closing(sqlite3.connect(destination)) as target:
            self._db.backup(target)

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap 'did anything change?'."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])


class KeyCache:
    """The server's view of the store: an in-memory map from key hash to record, so that a
    request costs one dict lookup whatever the number of keys, refreshed in the background
    within `interval` seconds of any change made by another process (e.g. `keys revoke`)."""

    def __init__(self, store: KeyStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._lock = threading.Lock()
        self._by_hash = store.by_hash()
        self._version = store.data_version()

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        try:
            return authenticate(authorization, self._by_hash, time.time())
        except GatewayError as error:
            # An unknown key may have been created a moment ago: look before refusing, so a
            # new key works at once. Only misses pay for this, and only a real change reloads.
            if error.status != 403 or not await asyncio.to_thread(self.refresh_if_changed):
                raise
        return authenticate(authorization, self._by_hash, time.time())

    def refresh_if_changed(self) -> bool:
        with self._lock:
            version = self._store.data_version()
            if version == self._version:
                return False
            # Read the version first: a change landing during the read is caught next time.
            self._version = version
            self._by_hash = self._store.by_hash()
            return True

    async def run_refresher(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await asyncio.to_thread(self.refresh_if_changed)
            except sqlite3.Error:
                logger.exception("could not re-read the key store; keeping the keys loaded")
