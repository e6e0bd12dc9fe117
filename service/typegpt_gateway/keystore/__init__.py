"""Client keys and what they used: key records, the store (SQLite or PostgreSQL) and its
schema, the in-memory key cache, key administration and the usage ledger."""
