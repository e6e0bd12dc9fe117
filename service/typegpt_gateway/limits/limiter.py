"""The limiter the request path calls: admits or refuses a key's request, and settles it.

It runs the rules on a backend (in-process or Redis) and decides what happens when the
backend cannot be reached: fail open (admit, unlimited) or fail closed (503), logged once
per outage and retried at most every `retry_interval` seconds until the backend is back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from .. import metrics
from ..errors import GatewayError
from ..keys import KeyRecord
from .rules import Decision, Limits, period_bounds

logger = logging.getLogger(__name__)

# Tokens a key has used since a day (its budget period's start), from the usage ledger.
BudgetSeed = Callable[[str, dt.date], Awaitable[int]]
SETTLE_GRACE = 5.0


class LimiterUnavailableError(Exception):
    """The backend's shared state cannot be reached right now."""


class Backend(Protocol):
    async def acquire(
        self, name: str, limits: Limits, lease: str, budget_seed: int
    ) -> Decision: ...

    async def add_tokens(
        self, name: str, limits: Limits, tokens: int, budget_seed: int
    ) -> None: ...

    async def release(self, name: str, lease: str) -> None: ...

    async def aclose(self) -> None: ...


class Ticket:
    """An admitted request: its rate-limit headers, and `finish` to settle it exactly once."""

    __slots__ = ("_finished", "_lease", "_limiter", "_limits", "_name", "headers")

    def __init__(
        self,
        limiter: Limiter | None,
        name: str = "",
        limits: Limits | None = None,
        lease: str = "",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._limiter = limiter
        self._name = name
        self._limits = limits or Limits()
        self._lease = lease
        self._finished = False
        self.headers = headers

    def finish(self, tokens: int) -> None:
        """Counts the request's tokens and frees its slot, off the request path."""
        if self._finished or self._limiter is None:
            return
        self._finished = True
        self._limiter.settle(self._name, self._limits, self._lease, tokens)


UNLIMITED = Ticket(None)


class Limiter:
    def __init__(
        self,
        backend: Backend,
        *,
        fail_open: bool,
        budget_seed: BudgetSeed | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self._backend = backend
        self._fail_open = fail_open
        self._budget_seed = budget_seed
        self._retry_interval = retry_interval
        self._down_until: float | None = None
        self._seeds: dict[tuple[str, dt.date], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def admit(self, record: KeyRecord) -> Ticket:
        """A ticket for the request, or the GatewayError (429, or 503 when failing closed)."""
        limits = Limits.of(record)
        if not limits.any:
            return UNLIMITED
        if self._down_until is not None and time.monotonic() < self._down_until:
            return self._unavailable(record.name)
        lease = uuid.uuid4().hex
        try:
            seed = await self._seed(record.name, limits)
            decision = await self._backend.acquire(record.name, limits, lease, seed)
        except LimiterUnavailableError as exc:
            self._went_down(exc)
            return self._unavailable(record.name)
        self._came_back()
        if decision.error is not None:
            metrics.LIMITER_REJECTIONS.labels(record.name, decision.refused or "").inc()
            raise decision.error
        return Ticket(self, record.name, limits, lease, decision.headers)

    def settle(self, name: str, limits: Limits, lease: str, tokens: int) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(name, limits, lease, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, name: str, limits: Limits, lease: str, tokens: int) -> None:
        try:
            if limits.max_concurrent is not None:
                await self._backend.release(name, lease)
            if tokens > 0 and limits.counts_tokens:
                seed = await self._seed(name, limits)
                await self._backend.add_tokens(name, limits, tokens, seed)
        except LimiterUnavailableError as exc:
            self._went_down(exc)

    async def _seed(self, name: str, limits: Limits) -> int:
        if limits.budget_tokens is None or self._budget_seed is None:
            return 0
        start, _ = period_bounds(time.time(), limits.budget_period or "month")
        cached = self._seeds.get((name, start))
        if cached is None:
            try:
                cached = await self._budget_seed(name, start)
            except Exception as exc:
                # The ledger is a convenience for restarts; a failing store must not block.
                logger.warning("could not read past usage for a budget: %s", type(exc).__name__)
                return 0
            self._seeds[(name, start)] = cached
        return cached

    def _unavailable(self, name: str) -> Ticket:
        if self._fail_open:
            return UNLIMITED
        metrics.LIMITER_REJECTIONS.labels(name, "unavailable").inc()
        raise GatewayError(
            503,
            "The gateway's rate limiter is unavailable; try again shortly.",
            "api_error",
            headers=(("retry-after", str(max(round(self._retry_interval), 1))),),
        )

    def _went_down(self, exc: Exception) -> None:
        if self._down_until is None:
            logger.error(
                "rate limiter backend unreachable (%s): %s until it returns",
                exc,
                "admitting requests without limits" if self._fail_open else "refusing requests",
            )
        self._down_until = time.monotonic() + self._retry_interval

    def _came_back(self) -> None:
        if self._down_until is not None:
            logger.warning("rate limiter backend reachable again; limits apply")
            self._down_until = None

    async def settled(self, grace: float | None = None) -> None:
        """Waits (at most `grace` seconds) for the settles under way."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    async def aclose(self) -> None:
        """Settles what is still in flight (bounded), then closes the backend."""
        await self.settled(SETTLE_GRACE)
        await self._backend.aclose()
