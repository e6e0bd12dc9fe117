"""When a failed upstream attempt is tried again, and after how long. Pure rules on top of
tenacity, which runs the loop: full-jitter exponential backoff, bounded by a number of
attempts and by a deadline that no backoff may cross.

Only attempts whose failure reached no client are retried (the caller retries only before it
has answered). Another upstream that is awake is tried at once; otherwise the next attempt
waits, at least as long as the Retry-After says. A rest never adds to the wait: when every
upstream rests the request goes to one of them anyway (routing.py), so a client sees the
same retries as without rests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from ..errors import GatewayError

# Connect errors are retried too; other client errors (4xx) never are.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class AttemptFailed(Exception):
    """One upstream attempt failed before anything was sent to the client."""

    def __init__(
        self,
        error: GatewayError,
        *,
        retryable: bool,
        cools: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable
        # Counts against the upstream's health (it failed, not the client's request).
        self.cools = cools
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    # Seconds from the first attempt; no retry starts, and no backoff waits, past it.
    deadline: float
    backoff: float
    backoff_max: float


def backoff_wait(jittered: float, retry_after: float | None, *, failover_ready: bool) -> float:
    """Seconds before the next attempt."""
    if failover_ready:
        return 0.0
    return max(jittered, retry_after or 0.0)


# What the caller knows when an attempt failed: whether another upstream is ready for the
# next attempt at once.
NextUpstream = Callable[[AttemptFailed], bool]


Result = TypeVar("Result")


async def call_with_retries(
    call: Callable[[], Awaitable[Result]],
    policy: RetryPolicy,
    next_upstream: NextUpstream,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Result:
    """`call()` until it succeeds, as `policy` allows; re-raises the last AttemptFailed.

    The first call runs bare: nearly every request succeeds at once, and setting up tenacity
    costs about 30 µs of CPU. A failure starts tenacity, handed that failure as its first
    attempt, so that every wait and stop still counts it."""
    started = clock()
    try:
        return await call()
    except AttemptFailed as failure:
        replay: AttemptFailed | None = failure
    rest = replace(policy, deadline=policy.deadline - (clock() - started))
    async for attempt in _retrying(rest, next_upstream, sleep):
        with attempt:
            if replay is not None:
                first, replay = replay, None
                raise first
            return await call()
    raise AssertionError("unreachable: tenacity returns or raises")


def _retrying(
    policy: RetryPolicy,
    next_upstream: NextUpstream,
    sleep: Callable[[float], Awaitable[None]],
) -> AsyncRetrying:
    """`async for attempt in _retrying(...): with attempt: ...`; re-raises the last failure."""
    jitter = wait_random_exponential(multiplier=policy.backoff, max=policy.backoff_max)

    def wait(state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if not isinstance(failure, AttemptFailed):
            return 0.0
        return backoff_wait(
            jitter(state), failure.retry_after, failover_ready=next_upstream(failure)
        )

    return AsyncRetrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, AttemptFailed) and exc.retryable),
        wait=wait,
        stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.deadline),
        sleep=sleep,
        reraise=True,
    )
