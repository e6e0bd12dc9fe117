-- Version 1: the schema of the last release before versions were recorded, for both dialects.
--
-- Every statement is IF NOT EXISTS: on a database an older release made (no schema_version
-- table), this completes what that release lacked, after schema.py has added the keys columns
-- it lacked, and leaves the rest as it is.
--
-- {id}, {integer}, {real} and {bytes} are the dialects' type names (schema.py); a statement
-- under "-- only: <dialect>" is run on that dialect alone. Comment lines are not sent.

CREATE TABLE IF NOT EXISTS keys (
    id {id} PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash {bytes} NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    models TEXT,
    rpm {integer},
    tpm {integer},
    max_concurrent {integer},
    budget_tokens {integer},
    budget_period TEXT,
    created_at {real} NOT NULL,
    expires_at {real},
    revoked_at {real}
);

-- A name may be reused once its key is revoked, never while it is live.
CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys(name) WHERE revoked_at IS NULL;

CREATE TABLE IF NOT EXISTS usage (
    key_name TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests {integer} NOT NULL DEFAULT 0,
    prompt_tokens {integer} NOT NULL DEFAULT 0,
    completion_tokens {integer} NOT NULL DEFAULT 0,
    errors {integer} NOT NULL DEFAULT 0,
    PRIMARY KEY (key_name, day, model)
);

-- PostgreSQL has no SQLite data_version: every write to keys bumps this counter instead.
-- only: postgresql
CREATE TABLE IF NOT EXISTS keys_version (id INTEGER PRIMARY KEY, version {integer} NOT NULL);

-- only: postgresql
INSERT INTO keys_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- The usage batches written, so that a batch written again (its commit's answer was lost) is
-- not counted twice.
CREATE TABLE IF NOT EXISTS ledger_batches (id TEXT PRIMARY KEY, written_at {real} NOT NULL);

CREATE INDEX IF NOT EXISTS ledger_batches_written_at ON ledger_batches(written_at);
