"""Readiness: whether this process can serve (GET /readyz, StatusService.GetReadiness and
grpc.health.v1).

Ready means not draining (set by the drain, server.Backend.begin_drain) and every dependency
of this process answering: the key store and, when configured, Redis. Upstream health is
deliberately left out: every replica shares the upstreams, so a failing upstream would make
a load balancer take all of them out at once, and the gateway still routes around it
(routing.py). It shows in the metrics and the log instead.

A check is an async callable returning None, or what is wrong. Checks run one probe at a
time: a probe that arrives while one runs waits for that one's answer, so a hung dependency
pins at most one worker thread however often a load balancer asks, and the ledger, budget
reads and admin calls are not queued behind a pile of stuck probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..api.status_service import Check
from ..keystore.sqlite import KeyStore
from ..keystore.store import Store
from ..limits import Backend as LimiterBackend
from ..limits import LimiterUnavailableError

# A probe that hangs is a failed probe: answer before a load balancer gives up on us.
CHECK_TIMEOUT = 2.0
# How often grpc.health.v1 is brought up to date (it has no hook to ask on demand).
WATCH_INTERVAL = 2.0


class ReadinessProbe:
    def __init__(self, *checks: Check) -> None:
        self.draining = False
        self.checks: list[Check] = list(checks)
        self._running: asyncio.Task[str | None] | None = None
        self._current = "a check"

    async def problem(self) -> str | None:
        """None when ready, else the first thing wrong."""
        if self.draining:
            return "draining"
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._run_checks())
        try:
            # Shielded: a probe that gives up leaves the checks running for the next one.
            return await asyncio.wait_for(asyncio.shield(self._running), CHECK_TIMEOUT)
        except TimeoutError:
            return f"{self._current} did not answer within {CHECK_TIMEOUT:g} s"

    async def _run_checks(self) -> str | None:
        for check in self.checks:
            self._current = getattr(check, "__name__", "a check").replace("_", " ")
            found = await check()
            if found is not None:
                return found
        return None

    async def watch(self, on_change: Callable[[bool], Awaitable[None]]) -> None:
        """Calls `on_change(ready)` whenever readiness changes, until cancelled."""
        ready: bool | None = None
        while True:
            now_ready = await self.problem() is None
            if now_ready != ready:
                ready = now_ready
                await on_change(ready)
            await asyncio.sleep(WATCH_INTERVAL)

    async def aclose(self) -> None:
        if self._running is not None and not self._running.done():
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running


def in_thread(check: Callable[[], str | None], name: str) -> Check:
    """A blocking check (a database driver call), run off the event loop."""

    async def run() -> str | None:
        return await asyncio.to_thread(check)

    run.__name__ = name
    return run


def key_store_check(store: Store) -> Check:
    if isinstance(store, KeyStore):
        return in_thread(_sqlite_check(store.path), "the key store")

    def key_store() -> str | None:
        # The PostgreSQL store reconnects on its next call when its connection was lost.
        try:
            store.data_version()
        except Exception as exc:
            return f"the key store cannot be reached ({type(exc).__name__})"
        return None

    return in_thread(key_store, "the key store")


def _sqlite_check(path: Path) -> Callable[[], str | None]:
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


def rate_limits_check(backend: LimiterBackend) -> Check:
    """The limiter's shared state (Redis) answers a PING, through the limiter's own client
    and within its timeout: what a rate-limited request would meet."""

    async def redis() -> str | None:
        try:
            await backend.ping()
        except LimiterUnavailableError as exc:
            return f"Redis cannot be reached ({exc})"
        return None

    redis.__name__ = "Redis"
    return redis
