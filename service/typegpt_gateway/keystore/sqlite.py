"""The SQLite key store (the default, GATEWAY_DB): one file shared by the CLI and the server."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .schema import SQLITE
from .sql import LOCK_WAIT, SqlStore


class KeyStore(SqlStore):
    """The SQLite store."""

    _dialect = SQLITE
    _integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        super().__init__()
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Autocommit unless a transaction is opened explicitly.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # data_version ignores this connection's own commits: count those here.
        self._own_writes = 0
        try:
            self._use_wal()
            self._db.execute(f"PRAGMA busy_timeout={round(LOCK_WAIT * 1000)}")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _use_wal(self) -> None:
        """WAL mode: readers go on while one connection writes. A file's first switch to it
        turns the shared lock of its read into an exclusive one, and SQLite answers "database
        is locked" at once, without waiting, when another connection is doing the same (the
        CLI and the server opening a new file together): tried again until LOCK_WAIT."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.005)

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
