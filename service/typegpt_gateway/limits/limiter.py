"""The limiter the request path calls: admits or refuses a key's request, and settles it.

It runs the rules on a backend (in-process or Redis) and decides what happens when what it
needs cannot be had. Either way the request follows the failure mode: open (admitted without
the limits that cannot be judged) or closed (503).

- The backend is unreachable: logged once per outage. While it lasts no request waits on it:
  one probe at a time checks every `retry_interval` seconds whether it is back, and limits
  apply again as soon as it answers.
- A key's past usage for its budgets (tokens and cost) cannot be read from the usage ledger
  (the key store): that request goes without its budgets, and the next one reads again. A
  guess never reaches the backend, which would keep it as the budgets' start for the whole
  period.

Settling (giving a slot back, counting tokens and cost) is done off the request path by one worker,
a bounded number of keys at a time. What cannot be settled while the backend is down waits,
one entry per key, and is settled when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from ..errors import GatewayError
from ..keystore.records import KeyRecord
from ..ops import metrics
from .rules import Decision, Limits, Spent, period_bounds

logger = logging.getLogger(__name__)

# What a key has spent since a day (its budget period's start), from the usage ledger.
BudgetSeed = Callable[[str, dt.date], Awaitable[Spent]]
SETTLE_GRACE = 5.0
# How long a request waits for its key's past usage before it goes without its budget.
SEED_TIMEOUT = 1.0
# Keys settled at once: each holds a backend connection while it is settled.
SETTLE_CONCURRENCY = 32


class LimiterUnavailableError(Exception):
    """The backend's shared state cannot be reached right now."""


class _Deferred(Exception):
    """A settle put off until the backend is back."""


class Backend(Protocol):
    async def acquire(
        self, name: str, limits: Limits, lease: str, budget_seed: Spent
    ) -> Decision: ...

    async def add_usage(
        self, name: str, limits: Limits, used: Spent, budget_seed: Spent | None
    ) -> None:
        """Counts a request's tokens (towards tpm and the budgets) and cost (towards the
        budgets). `budget_seed` None: the key's past usage is unknown, so they count towards
        its budgets only if the period's budgets are counted already."""

    async def release(self, name: str, lease: str) -> None: ...

    async def ping(self) -> None:
        """Returns when the backend answers; LimiterUnavailableError when it does not."""

    async def aclose(self) -> None: ...


class Ticket:
    """An admitted request: its rate-limit headers, and `finish` to settle it exactly once.

    `lease` is its concurrency slot, "" when it holds none."""

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

    def finish(self, tokens: int, cost_micro_usd: int = 0) -> None:
        """Counts the request's tokens and cost and frees its slot, off the request path."""
        if self._finished or self._limiter is None:
            return
        self._finished = True
        self._limiter.settle(self._name, self._limits, self._lease, Spent(tokens, cost_micro_usd))


UNLIMITED = Ticket(None)


class Limiter:
    def __init__(
        self,
        backend: Backend,
        *,
        fail_open: bool,
        budget_seed: BudgetSeed | None = None,
        retry_interval: float = 1.0,
        seed_timeout: float = SEED_TIMEOUT,
    ) -> None:
        self._backend = backend
        self._fail_open = fail_open
        self._budget_seed = budget_seed
        self._retry_interval = retry_interval
        self._seed_timeout = seed_timeout
        self._down = False
        self._probe: asyncio.Task[None] | None = None
        self._unconfirmed_logged = False  # once per outage
        # Per key: its budget period's first day and what the ledger had for it.
        self._seeds: dict[str, tuple[dt.date, Spent]] = {}
        self._seed_reads: dict[tuple[str, dt.date], asyncio.Task[Spent | None]] = {}
        self._store_failing = False
        # Settles to do, per key: slots to give back, and usage to count (with the limits).
        self._releases: dict[str, list[str]] = {}
        self._usage: dict[str, tuple[Limits, Spent]] = {}
        self._held = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        """Concurrency slots this process holds, or has still to give back to the backend."""
        return self._held

    async def admit(self, record: KeyRecord) -> Ticket:
        """A ticket for the request, or the GatewayError (429, or 503 when failing closed)."""
        limits = Limits.of(record)
        if not limits.any:
            return UNLIMITED
        name = record.name
        if self._down:
            return self._unavailable(name, limits)
        seed = await self._seed(name, limits)
        checked = limits
        if seed is None:
            if not self._fail_open:
                return self._unavailable(name, limits)
            checked = replace(limits, budget_tokens=None, budget_usd_micro=None, budget_period=None)
            if not checked.any:
                return Ticket(self, name, limits)
        lease = uuid.uuid4().hex
        try:
            decision = await self._backend.acquire(name, checked, lease, seed or Spent())
        except LimiterUnavailableError as exc:
            if checked.max_concurrent is not None:
                # A Redis that resumes may still run the admission: give its slot back then.
                self._hold()
                self._releases.setdefault(name, []).append(lease)
                self._schedule()
            self._went_down(exc)
            return self._unavailable(name, limits)
        if decision.error is not None:
            metrics.LIMITER_REJECTIONS.labels(name, decision.refused or "").inc()
            raise decision.error
        if checked.max_concurrent is None:
            lease = ""
        else:
            self._hold()
        return Ticket(self, name, limits, lease, decision.headers)

    def settle(self, name: str, limits: Limits, lease: str, used: Spent) -> None:
        counted = (used.tokens > 0 or used.cost_micro_usd > 0) and limits.counts_usage
        if not lease and not counted:
            return
        if lease:
            self._releases.setdefault(name, []).append(lease)
        if counted:
            self._owe(name, limits, used)
        self._schedule()

    def _schedule(self) -> None:
        self._idle.clear()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._settle_all())
        self._wake.set()

    def _owe(self, name: str, limits: Limits, used: Spent) -> None:
        # The key's latest limits say where its usage counts.
        _, owed = self._usage.get(name, (limits, Spent()))
        self._usage[name] = (limits, owed + used)

    def _hold(self) -> None:
        self._held += 1
        metrics.LIMITER_IN_FLIGHT.set(self._held)

    def _given_back(self) -> None:
        self._held -= 1
        metrics.LIMITER_IN_FLIGHT.set(self._held)

    async def _settle_all(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._down:  # else the probe wakes this when the backend is back
                releases, self._releases = self._releases, {}
                owed, self._usage = self._usage, {}
                names = list(releases.keys() | owed.keys())
                for start in range(0, len(names), SETTLE_CONCURRENCY):
                    await asyncio.gather(
                        *(
                            self._settle_key(name, releases.get(name, []), owed.get(name))
                            for name in names[start : start + SETTLE_CONCURRENCY]
                        )
                    )
            if not self._wake.is_set() and not (self._releases or self._usage):
                self._idle.set()

    async def _settle_key(
        self, name: str, leases: list[str], owed: tuple[Limits, Spent] | None
    ) -> None:
        try:
            while leases:
                if self._down:
                    raise _Deferred
                # Giving a slot back twice is harmless: a failed release is tried again later.
                await self._backend.release(name, leases[-1])
                leases.pop()
                self._given_back()
            if owed is not None:
                if self._down:
                    raise _Deferred
                limits, used = owed
                seed = await self._seed(name, limits)
                owed = None
                try:
                    await self._backend.add_usage(name, limits, used, seed)
                except LimiterUnavailableError:
                    # Redis may have counted them before the answer was lost (a paused Redis
                    # runs what it was sent when it resumes): counting them again could count
                    # them twice. The usage ledger has them either way.
                    metrics.LIMITER_UNCONFIRMED_TOKENS.inc(used.tokens)
                    if not self._unconfirmed_logged:
                        self._unconfirmed_logged = True
                        logger.warning(
                            "tokens whose count in the rate limiter backend failed midway are "
                            "not sent again (they may be counted); the usage ledger has them"
                        )
                    raise
        except (LimiterUnavailableError, _Deferred) as exc:
            if isinstance(exc, LimiterUnavailableError):
                self._went_down(exc)
            if leases:
                self._releases.setdefault(name, []).extend(leases)
            if owed is not None:
                self._owe(name, *owed)
        except Exception:
            # A bug must not stop the worker: every other key still gets settled.
            logger.exception("could not settle the limits of key %r", name)

    async def _seed(self, name: str, limits: Limits) -> Spent | None:
        """What the usage ledger has for the key's budget period (nothing without a budget),
        or None when it cannot be read now."""
        if not limits.budgeted or self._budget_seed is None:
            return Spent()
        start, _ = period_bounds(time.time(), limits.budget_period or "month")
        cached = self._seeds.get(name)
        if cached is not None and cached[0] == start:
            return cached[1]
        if self._store_failing and self._seed_reads:
            return None  # while the store fails, one read at a time finds out when it is back
        read = self._seed_reads.get((name, start))
        if read is None:
            read = asyncio.get_running_loop().create_task(self._read_seed(name, start))
            self._seed_reads[(name, start)] = read
        try:
            # A read that outlasts the wait goes on, and a late answer is kept for the next.
            return await asyncio.wait_for(asyncio.shield(read), self._seed_timeout)
        except TimeoutError:
            self._seed_failed("timed out")
            return None

    async def _read_seed(self, name: str, start: dt.date) -> Spent | None:
        assert self._budget_seed is not None
        try:
            spent = await self._budget_seed(name, start)
        except Exception as exc:
            self._seed_failed(type(exc).__name__)
            return None
        finally:
            self._seed_reads.pop((name, start), None)
        self._seeds[name] = (start, spent)
        if self._store_failing:
            self._store_failing = False
            logger.warning("past usage for budgets readable again")
        return spent

    def _seed_failed(self, reason: str) -> None:
        if not self._store_failing:
            self._store_failing = True
            logger.warning(
                "could not read past usage for budgets (%s): %s until it can",
                reason,
                "admitting requests without their budget"
                if self._fail_open
                else "refusing requests of keys with a budget",
            )

    def _unavailable(self, name: str, limits: Limits) -> Ticket:
        if self._fail_open:
            # Admitted without limits; its tokens are still counted once the limiter can.
            return Ticket(self, name, limits) if limits.counts_usage else UNLIMITED
        metrics.LIMITER_REJECTIONS.labels(name, "unavailable").inc()
        raise GatewayError(
            503,
            "The gateway's rate limiter is unavailable; try again shortly.",
            "api_error",
            headers=(("retry-after", str(max(round(self._retry_interval), 1))),),
        )

    def _went_down(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            logger.error(
                "rate limiter backend unreachable (%s): %s until it returns",
                exc,
                "admitting requests without limits" if self._fail_open else "refusing requests",
            )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval)
            try:
                await self._backend.ping()
            except LimiterUnavailableError:
                continue
            break
        self._down = False
        self._unconfirmed_logged = False
        logger.warning("rate limiter backend reachable again; limits apply")
        # What waited for the backend is settled now.
        self._wake.set()

    async def settled(self, grace: float | None = None) -> None:
        """Waits (at most `grace` seconds) until every settle is done."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)

    async def aclose(self) -> None:
        """Settles what is still to settle (bounded), then closes the backend."""
        if not self._down:
            await self.settled(SETTLE_GRACE)
        if self._releases or self._usage:
            logger.warning(
                "rate limiter backend unreachable at shutdown: %d slots expire by themselves, "
                "tokens of %d keys are in the usage ledger only",
                sum(len(leases) for leases in self._releases.values()),
                len(self._usage),
            )
        for task in (self._worker, self._probe, *self._seed_reads.values()):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._backend.aclose()
