"""The key store schemas of the releases before schema versions were recorded, verbatim as
each release created them: the stores must open them (tests/keystore/test_store.py,
tests/keystore/test_store_migrations.py)."""

# The schema of the first release (before limits and the ledger), verbatim.
FIRST_SCHEMA = """
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
CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys(name) WHERE revoked_at IS NULL;
"""

# The SQLite and PostgreSQL schemas of the release before batch ids, verbatim.
LEDGER_SCHEMA_SQLITE = """
CREATE TABLE keys (
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
CREATE UNIQUE INDEX keys_live_name ON keys(name) WHERE revoked_at IS NULL;
CREATE TABLE usage (
    key_name TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_name, day, model)
);
"""
LEDGER_SCHEMA_POSTGRES = """
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
"""

# The SQLite and PostgreSQL schemas of the last release before versions (with batch ids):
# schema version 1.
LAST_UNVERSIONED_SQLITE = (
    LEDGER_SCHEMA_SQLITE
    + """
CREATE TABLE IF NOT EXISTS ledger_batches (id TEXT PRIMARY KEY, written_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_batches_written_at ON ledger_batches(written_at)
"""
)
LAST_UNVERSIONED_POSTGRES = (
    LEDGER_SCHEMA_POSTGRES
    + """
-- The usage batches written, so that a batch written again (its commit's answer was lost) is
-- not counted twice.
CREATE TABLE IF NOT EXISTS ledger_batches (
    id TEXT PRIMARY KEY,
    written_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_batches_written_at ON ledger_batches(written_at);
"""
)
