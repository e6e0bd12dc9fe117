"""Opens the key store the settings name: the one module that knows both dialects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..redaction import register_url_password
from .sqlite import KeyStore
from .store import Store

if TYPE_CHECKING:
    from ..settings import Settings


def open_store(settings: Settings) -> Store:
    """PostgreSQL when DATABASE_URL is set, else the SQLite file GATEWAY_DB."""
    if settings.database_url is not None:
        # Here, not above: psycopg is loaded only by those who use PostgreSQL.
        from .postgres import PostgresKeyStore

        url = settings.database_url.get_secret_value()
        register_url_password(url)
        return PostgresKeyStore(url)
    return KeyStore(settings.db)
