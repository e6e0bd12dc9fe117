"""The PostgreSQL key store (DATABASE_URL=postgresql://…), for replicas that share keys and
the usage ledger across hosts. Same interface and SQL as the SQLite store (`store`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from .store import BackupUnsupportedError, SqlStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash BYTEA NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    models TEXT,
    rpm BIGINT,
    tpm BIGINT,
    max_concurrent BIGINT,
    budget_tokens BIGINT,
    budget_period TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys(name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS usage (
    key_name TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_name, day, model)
);
-- PostgreSQL has no SQLite data_version: every write to keys bumps this counter instead.
CREATE TABLE IF NOT EXISTS keys_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
INSERT INTO keys_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
-- The usage batches written, so that a batch written again (its commit's answer was lost) is
-- not counted twice.
CREATE TABLE IF NOT EXISTS ledger_batches (
    id TEXT PRIMARY KEY,
    written_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_batches_written_at ON ledger_batches(written_at);
"""
# Any constant: serialises schema creation between replicas starting at once.
_SCHEMA_LOCK = 0x7479_7065_6770_74


class PostgresKeyStore(SqlStore):
    _integrity_errors = (psycopg.errors.UniqueViolation,)

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._conn = self._connect()
        with self._transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._conn.execute(statement)  # type: ignore[call-overload]

    def __repr__(self) -> str:
        return "PostgresKeyStore()"  # the URL may hold a password

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=10)

    def _connection(self) -> psycopg.Connection[Any]:
        # A dropped connection (server restart, network) is replaced on the next call.
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        return self._connection().execute(sql.replace("?", "%s"), tuple(params))  # type: ignore[arg-type]

    def _executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        with self._connection().cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), [tuple(row) for row in rows])  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._connection().transaction():
            yield

    def _changed(self) -> None:
        self._execute("UPDATE keys_version SET version = version + 1 WHERE id = 1")

    def data_version(self) -> int:
        with self._lock:
            return int(self._execute("SELECT version FROM keys_version WHERE id = 1").fetchone()[0])

    def backup(self, destination: Path) -> None:
        raise BackupUnsupportedError(
            "a PostgreSQL key store is backed up with PostgreSQL's own tools, e.g. "
            "`pg_dump --table keys --table usage --table keys_version $DATABASE_URL`"
        )

    def close(self) -> None:
        # Not while a worker thread is still using the connection (the key refresher, at
        # shutdown): closing it under a running statement crashes SQLite.
        with self._lock:
            self._conn.close()
