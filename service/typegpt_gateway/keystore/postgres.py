"""The PostgreSQL key store (DATABASE_URL=postgresql://…), for replicas that share keys and
the usage ledger across hosts. Same interface (`store`) and SQL (`sql`) as the SQLite store."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .schema import POSTGRESQL
from .sql import LOCK_WAIT, SqlStore
from .store import BackupUnsupportedError

# The store's statements take milliseconds; one running this long is stuck, and it holds the
# store's one connection (and so every other store call) behind it. Above LOCK_WAIT, so that a
# lock wait ends as the lock timeout it is.
STATEMENT_TIMEOUT = 10.0
# A stopped server, or one stuck on its disk, enforces no statement_timeout, and its kernel
# still acknowledges every TCP segment, so keepalives and tcp_user_timeout never fire either:
# a call still running after this long has its connection cut (_Watchdog) and fails, and the
# next call reconnects.
CALL_TIMEOUT = STATEMENT_TIMEOUT + 5.0
CONNECT_TIMEOUT = 10
# A peer that is gone (host down, network cut) is noticed in about 25 s: by keepalive probes on
# an idle connection, by tcp_user_timeout when what was sent is never acknowledged.
TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}


class _Watchdog:
    """Cuts the connection of a call that has run for CALL_TIMEOUT: shutting its socket down
    wakes the thread waiting on it with an error, which nothing else would."""

    def __init__(self, cut_off: Callable[[], None]) -> None:
        self._cut_off = cut_off
        self._changed = threading.Condition()
        self._deadline: float | None = None
        self._depth = 0
        self._closed = False
        threading.Thread(target=self._watch, name="pgstore-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Around one call, under the store's lock (a nested call runs within the outer one's
        time)."""
        with self._changed:
            self._depth += 1
            if self._depth == 1:
                self._deadline = time.monotonic() + CALL_TIMEOUT
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._depth -= 1
                if self._depth == 0:
                    self._deadline = None

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                if self._deadline is None:
                    self._changed.wait()
                elif (left := self._deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                else:
                    self._deadline = None
                    # Under the condition: the call cannot end meanwhile, so the socket is
                    # still that call's and not a descriptor reused by something else.
                    self._cut_off()


class PostgresKeyStore(SqlStore):
    _dialect = POSTGRESQL
    _integrity_errors = (psycopg.errors.UniqueViolation,)

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        # The URL's own settings win over ours.
        given = conninfo_to_dict(url)
        self._tcp = {name: value for name, value in TCP_SETTINGS.items() if name not in given}
        self._watchdog = _Watchdog(self._cut_off)
        try:
            self._conn = self._connect()
        except BaseException:
            self._watchdog.close()
            raise
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return "PostgresKeyStore()"  # the URL may hold a password

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            make_conninfo(self._url, **self._tcp), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
        # Ours only where nothing set them (the URL's options, ALTER ROLE or DATABASE, the
        # server's configuration): 0, their default, means no bound at all.
        conn.execute(
            "SELECT set_config(name, value, false) "
            "FROM (VALUES ('statement_timeout', %s), ('lock_timeout', %s)) AS ours (name, value) "
            "WHERE current_setting(name) = '0'",
            (f"{round(STATEMENT_TIMEOUT * 1000)}ms", f"{round(LOCK_WAIT * 1000)}ms"),
        )
        return conn

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with super()._locked(), self._watchdog.watching():
            yield

    def _cut_off(self) -> None:
        try:
            descriptor = self._conn.pgconn.socket
        except psycopg.OperationalError:
            return  # already lost: the call is failing or reconnecting (CONNECT_TIMEOUT)
        # A duplicate, to be closed here; shutting it down shuts the connection's socket.
        with socket.socket(fileno=os.dup(descriptor)) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)

    def _connection(self) -> psycopg.Connection[Any]:
        # A dropped connection (server restart, network) is replaced on the next call.
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        return self._connection().execute(sql.replace("?", "%s"), tuple(params))

    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._connection().cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), [tuple(row) for row in rows])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._connection().transaction():
            yield

    def _changed(self) -> None:
        self._execute("UPDATE keys_version SET version = version + 1 WHERE id = 1")

    def data_version(self) -> int:
        with self._locked():
            row = self._execute("SELECT version FROM keys_version WHERE id = 1").fetchone()
        if row is None:  # the schema inserts it; only a hand-made change takes it away
            raise LookupError("keys_version has no row")
        return int(row[0])

    def backup(self, destination: Path) -> None:
        raise BackupUnsupportedError(
            "a PostgreSQL key store is backed up with PostgreSQL's own tools, e.g. "
            "`pg_dump --table keys --table usage --table keys_version --table schema_version "
            "$DATABASE_URL`"
        )

    def close(self) -> None:
        # Not while a worker thread is still using the connection (the key refresher, at
        # shutdown); a stuck one is cut off within CALL_TIMEOUT.
        with self._lock:
            self._conn.close()
        self._watchdog.close()
