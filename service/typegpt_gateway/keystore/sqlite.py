"""The SQLite key store (the default, GATEWAY_DB): one file shared by the CLI and the server."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .sql import LOCK_WAIT, SqlStore

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
    revoked_at REAL
);
-- A name may be reused once its key is revoked, never while it is live.
CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys(name) WHERE revoked_at IS NULL;
"""
# Columns added after the first release; a store from before gets them on open.
_ADDED_COLUMNS = (
    ("tpm", "INTEGER"),
    ("max_concurrent", "INTEGER"),
    ("budget_tokens", "INTEGER"),
    ("budget_period", "TEXT"),
)
_USAGE_TABLE = """
CREATE TABLE IF NOT EXISTS usage (
    key_name TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_name, day, model)
)
"""
# The usage batches written, so that a batch written again (its commit's answer was lost) is
# not counted twice.
_LEDGER_BATCHES = """
CREATE TABLE IF NOT EXISTS ledger_batches (id TEXT PRIMARY KEY, written_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_batches_written_at ON ledger_batches(written_at)
"""


class KeyStore(SqlStore):
    """The SQLite store."""

    _integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        super().__init__()
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Autocommit unless a transaction is opened explicitly.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA busy_timeout={round(LOCK_WAIT * 1000)}")
        self._db.executescript(_SCHEMA)
        self._migrate()
        # data_version ignores this connection's own commits: count those here.
        self._own_writes = 0

    def _migrate(self) -> None:
        with self._transaction():
            have = {row[1] for row in self._db.execute("PRAGMA table_info(keys)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in have:
                    self._db.execute(f"ALTER TABLE keys ADD COLUMN {column} {kind}")
            self._db.execute(_USAGE_TABLE)
            for statement in _LEDGER_BATCHES.split(";"):
                self._db.execute(statement)

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(params))

    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so two processes migrating or writing at
        # once wait for each other (busy_timeout) instead of failing half-way.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _changed(self) -> None:
        self._own_writes += 1

    def close(self) -> None:
        # Not while a worker thread is still using the connection (the key refresher, at
        # shutdown): closing it under a running statement crashes SQLite.
        with self._lock:
            self._db.close()

    def backup(self, destination: Path) -> None:
        """A consistent copy through SQLite's online backup: safe while the gateway runs."""
        with self._locked(), contextlib.closing(sqlite3.connect(destination)) as target:
            self._db.backup(target)

    def data_version(self) -> int:
        """Changes whenever a connection commits: a cheap 'did anything change?'."""
        with self._locked():
            return int(self._db.execute("PRAGMA data_version").fetchone()[0]) + self._own_writes
