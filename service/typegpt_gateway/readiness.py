"""Readiness: whether this gateway should be sent traffic (GET /readyz, grpc.health.v1).

Ready means not draining and every check passing. A check is a blocking callable returning
None, or what is wrong; the key store's is here, and an upstream check (all upstreams in
cooldown) can be added to `checks` by the code that knows upstreams.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

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


def key_store_check(path: Path) -> Check:
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
