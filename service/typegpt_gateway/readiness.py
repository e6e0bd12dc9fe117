"""Readiness: whether this gateway should be sent traffic (GET /readyz, grpc.health.v1).

Ready means not draining (set by the drain, server.Backend.begin_drain) and every check
passing. A check is a blocking callable returning None, or what is wrong: the key store's is
here, the upstreams' (at least one not cooling down) is Failover.readiness_check.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .store import KeyStore, Store

Check = Callable[[], str | None]
# A probe that hangs is a failed probe: answer before a load balancer gives up on us.
CHECK_TIMEOUT = 2.0


class ReadinessProbe:
    def __init__(self, *checks: Check) -> None:
        self.draining = False
        self.checks: list[Check] = list(checks)

    async def problem(self) -> str | None:
        """None when ready, else the first thing wrong."""
        if self.draining:
            return "draining"
        for check in self.checks:
            try:
                found = await asyncio.wait_for(asyncio.to_thread(check), CHECK_TIMEOUT)
            except TimeoutError:
                found = f"{getattr(check, '__name__', 'a check')} did not answer in time"
            if found is not None:
                return found
        return None


def key_store_check(store: Store) -> Check:
    if isinstance(store, KeyStore):
        return _sqlite_check(store.path)

    def key_store() -> str | None:
        # The PostgreSQL store reconnects on its next call when its connection was lost.
        try:
            store.data_version()
        except Exception as exc:
            return f"the key store cannot be reached ({type(exc).__name__})"
        return None

    return key_store


def _sqlite_check(path: Path) -> Check:
    """Reads the key store through a new connection, as a new process would: this notices a
    file that is gone, unreadable or locked, which the server's open connection would not."""

    def key_store() -> str | None:
        try:
            uri = f"{path.expanduser().resolve().as_uri()}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as db:
                db.execute("SELECT count(*) FROM keys").fetchone()
        except sqlite3.Error as exc:
            return f"the key store {path} cannot be read ({exc})"
        return None

    return key_store
