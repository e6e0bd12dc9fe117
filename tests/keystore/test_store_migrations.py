"""The key store's schema versions, on real SQLite files and a real PostgreSQL: a store made by
a release before versions is upgraded in place with its keys and usage kept; a new store is
made at the latest version with the schema of the last release before versions; a store at a
newer version than the code is refused and left untouched; a later migration runs once, and one
that fails leaves nothing behind; stores opened at the same moment migrate once."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gateway_process import cli
from old_store_schemas import (
    FIRST_SCHEMA,
    LAST_UNVERSIONED_POSTGRES,
    LAST_UNVERSIONED_SQLITE,
    LEDGER_SCHEMA_POSTGRES,
    LEDGER_SCHEMA_SQLITE,
)

from typegpt_gateway.keystore import schema
from typegpt_gateway.keystore.postgres import PostgresKeyStore
from typegpt_gateway.keystore.records import KeyRecord, hash_key
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.keystore.store import SchemaTooNewError, Store, UsageRow

DAY = dt.date(2026, 5, 1)
ALL_VERSIONS = list(range(1, schema.LATEST + 1))


# -- a database as the tests see it: through its driver, not through a store ------------------


@dataclass
class Database:
    dialect: str  # "sqlite" or "postgres"
    where: str  # a file or a URL
    opened: list[Store] = field(default_factory=list)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        if self.dialect == "sqlite":
            with contextlib.closing(sqlite3.connect(self.where, isolation_level=None)) as db:
                yield db
        else:
            import psycopg

            with psycopg.connect(self.where, autocommit=True) as db:
                yield db

    def script(self, sql: str) -> None:
        with self.connect() as db:
            if self.dialect == "sqlite":
                db.executescript(sql)
            else:
                db.execute(sql)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.dialect == "postgres":
            sql = sql.replace("?", "%s")
        with self.connect() as db:
            cursor = db.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def open(self) -> Store:
        if self.dialect == "sqlite":
            self.opened.append(KeyStore(Path(self.where)))
        else:
            self.opened.append(PostgresKeyStore(self.where))
        return self.opened[-1]

    def close_stores(self) -> None:
        while self.opened:
            self.opened.pop().close()

    def versions(self) -> list[tuple[int, float]]:
        return self.query("SELECT version, applied_at FROM schema_version ORDER BY version")

    def version_numbers(self) -> list[int]:
        return [version for version, _ in self.versions()]

    def tables(self) -> dict[str, dict[str, Any]]:
        """Each table but schema_version: its columns by name (type, nullability, default,
        key) and its indexes. Column order is left out: every statement names its columns."""
        tables = _sqlite_tables(self) if self.dialect == "sqlite" else _postgres_tables(self)
        tables.pop("schema_version", None)
        return tables


def _sqlite_tables(db: Database) -> dict[str, dict[str, Any]]:
    tables = {}
    with db.connect() as conn:
        names = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for (name,) in names:
            columns = {
                column: (kind, notnull, default, key)
                for _, column, kind, notnull, default, key in conn.execute(
                    f"PRAGMA table_info({name})"
                )
            }
            indexes = {}
            for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list({name})"):
                on = tuple(column for _, _, column in conn.execute(f"PRAGMA index_info({index})"))
                (sql,) = conn.execute(
                    "SELECT sql FROM sqlite_master WHERE name = ?", (index,)
                ).fetchone()
                where = " ".join(sql.split(" WHERE ", 1)[1].split()) if partial else None
                # SQLite's own indexes (UNIQUE, PRIMARY KEY) are named by their order.
                label = f"auto{on}" if index.startswith("sqlite_autoindex_") else index
                indexes[label] = (unique, origin, on, where)
            tables[name] = {"columns": columns, "indexes": indexes}
    return tables


def _postgres_tables(db: Database) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    rows = db.query(
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = current_schema()"
    )
    for name, column, kind, nullable, default in rows:
        table = tables.setdefault(name, {"columns": {}, "indexes": {}})
        table["columns"][column] = (kind, nullable, default)
    rows = db.query(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
    )
    for name, index, definition in rows:
        tables[name]["indexes"][index] = definition
    return tables


def new_database(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if dialect == "sqlite":
        return Database("sqlite", str(tmp_path / f"keys-{uuid.uuid4().hex}.db"))
    return Database("postgres", request.getfixturevalue("postgres_server").new_database())


@pytest.fixture
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Makes new, empty databases of a dialect; their stores are closed after the test."""
    made: list[Database] = []

    def make(dialect: str) -> Database:
        made.append(new_database(dialect, request, tmp_path))
        return made[-1]

    yield make
    for db in made:
        db.close_stores()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, databases) -> Database:
    return databases(request.param)


def latest_tables(dialect: str, databases) -> dict[str, dict[str, Any]]:
    """The tables a store made by the last release before versions has once the migrations
    after version 1 ran on it: what every store must come to, whatever it started from."""
    reference = databases(dialect)
    reference.script(LAST_UNVERSIONED_SQLITE if dialect == "sqlite" else LAST_UNVERSIONED_POSTGRES)
    driver = schema.SQLITE if dialect == "sqlite" else schema.POSTGRESQL
    for version in range(2, schema.LATEST + 1):
        reference.script(";\n".join(schema.statements(version, driver)) + ";")
    return reference.tables()


# -- what the releases before versions made and held --------------------------------------------


@dataclass(frozen=True)
class Release:
    name: str
    dialect: str
    schema: str  # verbatim


RELEASES = [
    Release("first", "sqlite", FIRST_SCHEMA),
    Release("ledger", "sqlite", LEDGER_SCHEMA_SQLITE),
    Release("batch-ids", "sqlite", LAST_UNVERSIONED_SQLITE),
    Release("ledger", "postgres", LEDGER_SCHEMA_POSTGRES),
    Release("batch-ids", "postgres", LAST_UNVERSIONED_POSTGRES),
]

# Keys as a release wrote them: a revoked key, the live key of the same name with every
# limit, a key without limits. A release stored the columns it knew.
KEYS = [
    {
        "name": "alice",
        "key_hash": hash_key("sk-alice-old"),
        "prefix": "sk-alice-o",
        "models": None,
        "rpm": 5,
        "created_at": 1_700_000_000.25,
        "expires_at": None,
        "revoked_at": 1_700_000_100.5,
    },
    {
        "name": "alice",
        "key_hash": hash_key("sk-alice-new"),
        "prefix": "sk-alice-n",
        "models": '["gpt-4o", "o3"]',
        "rpm": 60,
        "tpm": 100_000,
        "max_concurrent": 4,
        "budget_tokens": 2**40,
        "budget_period": "day",
        "created_at": 1_700_000_200.75,
        "expires_at": 4_102_444_800.0,
        "revoked_at": None,
    },
    {
        "name": "bob",
        "key_hash": hash_key("sk-bob"),
        "prefix": "sk-bob",
        "models": None,
        "rpm": None,
        "created_at": 1_700_000_300.0,
        "expires_at": None,
        "revoked_at": None,
    },
]
USAGE = {
    "alice": [UsageRow(DAY, "gpt-4o", 3, 30, 60, 1), UsageRow(DAY, "o3", 1, 10, 2**40, 0)],
    "bob": [UsageRow(DAY + dt.timedelta(days=1), "gpt-4o", 7, 70, 700, 2)],
}
KEYS_VERSION = 41  # PostgreSQL's count of writes to keys


def fill(db: Database, release: Release) -> list[KeyRecord]:
    """What the release's store held (its schema, keys, usage, a batch id, PostgreSQL's write
    count), and the records a store must read from it."""
    db.script(release.schema)
    tables = db.tables()
    known = tables["keys"]["columns"]
    records = []
    for key in KEYS:
        row = {column: value for column, value in key.items() if column in known}
        db.query(
            f"INSERT INTO keys ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            tuple(row.values()),
        )
        models = row.pop("models")
        records.append(KeyRecord(**row, models=None if models is None else ("gpt-4o", "o3")))
    if "usage" in tables:
        for name, rows in USAGE.items():
            for usage in rows:
                db.query(
                    "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        usage.day.isoformat(),
                        usage.model,
                        usage.requests,
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        usage.errors,
                    ),
                )
    if "ledger_batches" in tables:
        db.query("INSERT INTO ledger_batches (id, written_at) VALUES ('seen', 1.0)")
    if "keys_version" in tables:
        db.query("UPDATE keys_version SET version = ? WHERE id = 1", (KEYS_VERSION,))
    return records


# -- upgrading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: f"{r.dialect}-{r.name}")
def test_a_store_from_before_versions_is_upgraded_in_place_keeping_keys_and_usage(
    release, databases
):
    db = databases(release.dialect)
    records = fill(db, release)
    before = db.tables()

    store = db.open()
    assert db.version_numbers() == ALL_VERSIONS
    assert db.tables() == latest_tables(release.dialect, databases)
    # Every key as it was (hash, limits, revocation), found by its hash.
    assert store.records() == records
    assert store.by_hash()[hash_key("sk-alice-new")] == records[1]
    if "usage" in before:
        assert {name: store.usage(name) for name in USAGE} == USAGE
    if "ledger_batches" in before:
        assert store.add_usage([("bob", UsageRow(DAY, "o3", 1))], batch_id="seen") is False
    if "keys_version" in before:
        assert store.data_version() == KEYS_VERSION
    # What the release lacked, the store now has.
    assert store.add_usage([("bob", UsageRow(DAY, "o3", 1))], batch_id="new") is True
    assert store.update("alice", tpm=7, budget_tokens=9).tpm == 7
    db.close_stores()

    # Opened again (the CLI and the server both open it), it is left as it is.
    applied, tables = db.versions(), db.tables()
    assert db.open().get("alice").budget_tokens == 9
    assert (db.versions(), db.tables()) == (applied, tables)


def test_a_new_store_is_made_at_the_latest_version_with_the_last_unversioned_schema(
    database, databases
):
    store = database.open()
    assert database.version_numbers() == ALL_VERSIONS
    assert database.tables() == latest_tables(database.dialect, databases)
    assert store.records() == []


# -- refusing ----------------------------------------------------------------------------------


def make_newer(db: Database) -> int:
    """Records a version after the latest, as a newer release's migration would."""
    newer = schema.LATEST + 1
    db.query("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (newer, 2.0))
    return newer


def test_a_store_at_a_newer_version_is_refused_and_left_as_it_is(database):
    database.open().create("kept", rpm=3)
    database.close_stores()
    newer = make_newer(database)
    tables, versions = database.tables(), database.versions()

    with pytest.raises(SchemaTooNewError) as refused:
        database.open()
    assert str(refused.value).startswith(
        f"the key store's schema is at version {newer}, and this release of the gateway "
        f"knows versions up to {schema.LATEST}"
    )
    assert (database.tables(), database.versions()) == (tables, versions)
    assert database.query("SELECT name, rpm FROM keys") == [("kept", 3)]


def test_the_cli_refuses_a_newer_store_with_an_error_not_a_traceback(tmp_path):
    path = tmp_path / "keys.db"
    KeyStore(path).close()
    make_newer(Database("sqlite", str(path)))
    result = cli(path, "keys", "list", check=False)
    assert result.returncode == 1, result
    assert result.stderr.startswith("error: the key store's schema is at version"), result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_newer_store_with_an_error_not_a_traceback(make_gateway):
    gateway = make_gateway()
    KeyStore(gateway.db).close()
    make_newer(Database("sqlite", str(gateway.db)))
    with pytest.raises(RuntimeError, match="exited early"):
        gateway.start()
    assert gateway.process is not None and gateway.process.returncode == 1
    log = gateway.log()
    assert "the key store's schema is at version" in log and "Traceback" not in log, log


# -- later versions: each run once, in one transaction -----------------------------------------

# A version after the latest, as a later release might add.
LATER = """
ALTER TABLE keys ADD COLUMN note TEXT;
CREATE TABLE IF NOT EXISTS notes (id {integer} PRIMARY KEY, body TEXT NOT NULL);
"""
# One that fails after its first statement.
BROKEN = """
ALTER TABLE keys ADD COLUMN note TEXT;
INSERT INTO no_such_table VALUES (1);
"""


def with_a_later_version(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, schema.parse(text, "test")))
    monkeypatch.setattr(schema, "LATEST", len(schema.MIGRATIONS))


def test_a_store_at_the_latest_version_runs_only_the_later_migrations(database, monkeypatch):
    store = database.open()
    record, _ = store.create("kept", rpm=3)
    store.add_usage([("kept", UsageRow(DAY, "o3", 2))])
    database.close_stores()
    applied = database.versions()

    with_a_later_version(monkeypatch, LATER)
    store = database.open()
    assert store.records() == [record]
    assert store.usage("kept") == [UsageRow(DAY, "o3", 2)]
    assert database.versions()[: len(applied)] == applied  # not run again
    assert database.version_numbers() == [*ALL_VERSIONS, len(ALL_VERSIONS) + 1]
    tables = database.tables()
    assert "note" in tables["keys"]["columns"] and "notes" in tables


def test_a_migration_that_fails_leaves_the_store_as_it_was(database, monkeypatch):
    database.open().create("kept", rpm=3)
    database.close_stores()
    tables = database.tables()

    with_a_later_version(monkeypatch, BROKEN)
    with pytest.raises(Exception, match="no_such_table"):
        database.open()
    # The column its first statement added went with the rest.
    assert (database.tables(), database.version_numbers()) == (tables, ALL_VERSIONS)
    monkeypatch.undo()
    assert database.open().get("kept").rpm == 3


# -- opened at the same moment -------------------------------------------------------------------


def open_together(db: Database, count: int) -> list[Store]:
    """`count` stores opening one database at once, as the CLI and the server, or replicas."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait(30)
        try:
            db.open()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(db.opened) == count, errors
    return list(db.opened)


@pytest.mark.parametrize("made_by", ["nothing", "a-release-before-versions"])
def test_stores_opened_at_the_same_moment_migrate_once(database, made_by):
    records = []
    if made_by != "nothing":
        oldest = next(release for release in RELEASES if release.dialect == database.dialect)
        records = fill(database, oldest)
    stores = open_together(database, 4)
    assert database.version_numbers() == ALL_VERSIONS  # each recorded once
    assert all(store.records() == records for store in stores)
    stores[0].create("carol")
    assert stores[3].get("carol").name == "carol"


def test_new_sqlite_files_opened_at_the_same_moment_never_fail(tmp_path):
    """A new file's switch to WAL takes a lock that SQLite does not wait for: before the store
    tried again, about one round in twenty failed with "database is locked"."""
    for round_ in range(100):
        db = Database("sqlite", str(tmp_path / f"round-{round_}.db"))
        try:
            open_together(db, 4)
            assert db.version_numbers() == ALL_VERSIONS
        finally:
            db.close_stores()


# -- the migration files ------------------------------------------------------------------------


def test_a_migration_file_is_statements_with_type_placeholders_and_dialect_marks():
    statements = schema.parse(
        """
-- A comment line; not sent.
CREATE TABLE t (
    id {id} PRIMARY KEY,
    n {integer} NOT NULL
);

-- only: postgresql
INSERT INTO t (id, n) VALUES (1, 0);
CREATE INDEX t_n ON t(n);
""",
        "test",
    )
    assert [statement.only for statement in statements] == [None, "postgresql", None]
    assert schema.render(statements[0].sql, schema.SQLITE) == (
        "CREATE TABLE t (\n    id INTEGER PRIMARY KEY,\n    n INTEGER NOT NULL\n)"
    )
    assert schema.render(statements[0].sql, schema.POSTGRESQL) == (
        "CREATE TABLE t (\n    id BIGSERIAL PRIMARY KEY,\n    n BIGINT NOT NULL\n)"
    )


def test_each_version_renders_for_each_dialect():
    for version in ALL_VERSIONS:
        for dialect in (schema.SQLITE, schema.POSTGRESQL):
            assert not any("{" in sql for sql in schema.statements(version, dialect))
    # keys_version counts PostgreSQL's writes; SQLite has its data_version.
    assert not any("keys_version" in sql for sql in schema.statements(1, schema.SQLITE))
    assert any("keys_version" in sql for sql in schema.statements(1, schema.POSTGRESQL))


def test_a_malformed_migration_is_refused(tmp_path):
    with pytest.raises(ValueError, match=re.escape("no sqlite type for {float}")):
        schema.render("CREATE TABLE t (x {float})", schema.SQLITE)
    with pytest.raises(ValueError, match="does not end with ';'"):
        schema.parse("CREATE TABLE t (x TEXT)", "test")
    for name in ("0001_a.sql", "0003_c.sql"):
        (tmp_path / name).write_text(f"SELECT {name[3]};\n")
    with pytest.raises(ValueError, match="without gaps"):
        schema.load(tmp_path)
    (tmp_path / "0002_b.sql").write_text("SELECT 2;\n")
    loaded = schema.load(tmp_path)
    assert [[statement.sql for statement in version] for version in loaded] == [
        ["SELECT 1"],
        ["SELECT 2"],
        ["SELECT 3"],
    ]
