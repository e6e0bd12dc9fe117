"""The key store's schema, one for SQLite and PostgreSQL, and the migrations that bring a
database to it in place.

The schema is the ordered SQL files in `migrations/` (`0001_….sql`, `0002_….sql`, …), each
written once for both dialects: the few type names that differ are placeholders ({integer},
{real}, {bytes}, {id}) filled in from the dialect's mapping below, and a statement only one
dialect needs is marked `-- only: <dialect>`. The table `schema_version` records each version
applied. Opening a store (`SqlStore._migrate`) runs, in one transaction, every file above the
recorded version, then records it; a database at a version above the last file is refused
(SchemaTooNewError), never downgraded. The transaction holds the store's write lock from its
first statement (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's `pg_advisory_xact_lock`), so a CLI
and a server opening one SQLite file, or replicas opening one PostgreSQL database, at the same
moment migrate it once: the others wait, then find it done.

Version 1 is the schema of the last release before versions were recorded. A database with
tables but no `schema_version` comes from such a release: it is brought to version 1 in place,
the keys columns older releases lacked added first (tpm, max_concurrent, budget_tokens,
budget_period), then file 1, whose statements are all IF NOT EXISTS (and must stay so), adds
any table or index they lacked (the usage ledger, its batch ids) and leaves the rest as it is.
A new SQLite file has the same tables, columns, types and indexes as one those releases made,
though not in the same column order (they added the four columns at the end of keys): every
statement names its columns.

Why not alembic or yoyo-migrations: alembic brings SQLAlchemy, a second database layer beside
sqlite3 and psycopg, for four tables; yoyo-migrations opens connections and keeps a lock and
tables of its own. Either would adopt the databases existing releases made only by marking
them by hand (`alembic stamp`, `yoyo mark`). Here the migrations run on the store's own
connection, in its own transaction, under the lock it already takes, with no new dependency.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from .store import SchemaTooNewError

# Statements a store runs: (sql, params) with `?` placeholders, returning a cursor.
Execute = Callable[..., Any]

# Serialises migrations between PostgreSQL sessions (any constant; it was the schema lock of
# the releases before versions, so they and this one still wait for each other).
_PG_LOCK = 0x7479_7065_6770_74
# Columns the keys table gained after the first release and before versions were recorded.
_COLUMNS_BEFORE_VERSIONS = (
    ("tpm", "{integer}"),
    ("max_concurrent", "{integer}"),
    ("budget_tokens", "{integer}"),
    ("budget_period", "TEXT"),
)
_VERSION_TABLE = (
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at {real} NOT NULL)"
)
_ONLY = re.compile(r"^--\s*only:\s*(\w+)\s*$")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_FILE_NAME = re.compile(r"^(\d{4})_\w+\.sql$")


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    types: Mapping[str, str]  # the migrations' {placeholders}
    lock: str | None  # run first in the migration's transaction; None: the transaction locks
    tables: str  # the names of the tables
    columns: str  # the names of the columns of table `?`


SQLITE = Dialect(
    "sqlite",
    {"id": "INTEGER", "integer": "INTEGER", "real": "REAL", "bytes": "BLOB"},
    lock=None,  # its transactions begin IMMEDIATE: the database's write lock
    tables="SELECT name FROM sqlite_master WHERE type = 'table'",
    columns="SELECT name FROM pragma_table_info(?)",
)
POSTGRESQL = Dialect(
    "postgresql",
    {"id": "BIGSERIAL", "integer": "BIGINT", "real": "DOUBLE PRECISION", "bytes": "BYTEA"},
    lock=f"SELECT pg_advisory_xact_lock({_PG_LOCK})",
    tables="SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
    columns="SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = ?",
)


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    only: str | None  # the one dialect it is for


def parse(text: str, source: str) -> tuple[Statement, ...]:
    """The statements of a migration file, each ending with `;` at the end of a line."""
    statements: list[Statement] = []
    lines: list[str] = []
    only: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if marker := _ONLY.match(stripped):
            only = marker.group(1)
        elif stripped and not stripped.startswith("--"):
            lines.append(line)
            if stripped.endswith(";"):
                statements.append(Statement("\n".join(lines).strip().removesuffix(";"), only))
                lines, only = [], None
    if lines:
        raise ValueError(f"{source}: the last statement does not end with ';'")
    return tuple(statements)


def load(folder: Traversable) -> tuple[tuple[Statement, ...], ...]:
    """The migrations in `folder`, in order: the one at index i brings a database to version
    i + 1."""
    files = sorted(
        (
            (int(match.group(1)), entry)
            for entry in folder.iterdir()
            if (match := _FILE_NAME.match(entry.name))
        ),
        key=lambda numbered: numbered[0],
    )
    numbers = [number for number, _ in files]
    if numbers != list(range(1, len(files) + 1)):
        raise ValueError(f"migrations/ must number its files 1, 2, 3… without gaps: {numbers}")
    return tuple(parse(entry.read_text("utf-8"), entry.name) for _, entry in files)


MIGRATIONS = load(resources.files(__package__) / "migrations")
# The version this release's code reads and writes.
LATEST = len(MIGRATIONS)


def render(sql: str, dialect: Dialect) -> str:
    """`sql` with the dialect's type names in place of the placeholders."""

    def type_name(match: re.Match[str]) -> str:
        try:
            return dialect.types[match.group(1)]
        except KeyError:
            raise ValueError(f"no {dialect.name} type for {match.group(0)}") from None

    return _PLACEHOLDER.sub(type_name, sql)


def statements(version: int, dialect: Dialect) -> list[str]:
    """What migration `version` runs on `dialect`."""
    return [
        render(statement.sql, dialect)
        for statement in MIGRATIONS[version - 1]
        if statement.only in (None, dialect.name)
    ]


def migrate(execute: Execute, dialect: Dialect) -> tuple[int | None, int]:
    """Brings the database to LATEST, in the caller's transaction, which it locks first.
    Returns the version found (None: a database from before versions, 0: an empty one) and
    LATEST. Raises SchemaTooNewError, having changed nothing, for a database at a later
    version than LATEST."""
    if dialect.lock is not None:
        execute(dialect.lock)
    tables = {name for (name,) in execute(dialect.tables).fetchall()}
    found: int | None
    if "schema_version" in tables:
        (found,) = execute("SELECT MAX(version) FROM schema_version").fetchone()
        found = found or 0
        if found > LATEST:
            raise SchemaTooNewError(
                f"the key store's schema is at version {found}, and this release of the "
                f"gateway knows versions up to {LATEST}: a newer release has upgraded it. Run "
                "that release (or a later one); this one does not downgrade a key store."
            )
    else:
        execute(render(_VERSION_TABLE, dialect))
        found = None if "keys" in tables else 0
        if found is None:
            _add_columns_before_versions(execute, dialect)
    # From before versions, file 1 runs as on an empty database: its IF NOT EXISTS complete it.
    for version in range((found or 0) + 1, LATEST + 1):
        for sql in statements(version, dialect):
            execute(sql)
        execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
            (version, time.time()),
        )
    return found, LATEST


def _add_columns_before_versions(execute: Execute, dialect: Dialect) -> None:
    """Adds the keys columns that releases older than the last unversioned one lacked."""
    have = {name for (name,) in execute(dialect.columns, ("keys",)).fetchall()}
    for column, kind in _COLUMNS_BEFORE_VERSIONS:
        if column not in have:
            execute(render(f"ALTER TABLE keys ADD COLUMN {column} {kind}", dialect))
