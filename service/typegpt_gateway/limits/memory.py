"""The in-process limiter backend: exact on one gateway process, no extra service.

Every method runs without awaiting anything, so on the event loop each check-and-record is
one atomic step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .rules import (
    WINDOW,
    Decision,
    Limits,
    Snapshot,
    Spent,
    bucket_of,
    decide,
    in_window,
    period_bounds,
)


@dataclass
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    tokens: dict[int, int] = field(default_factory=dict)
    # The budget period's tokens and cost, under the period's id.
    budgets: dict[str, Spent] = field(default_factory=dict)
    leases: set[str] = field(default_factory=set)


def _period_id(now: float, limits: Limits) -> str:
    start, _ = period_bounds(now, limits.budget_period or "month")
    return f"{limits.budget_period}:{start.isoformat()}"


def _budget(state: _KeyState, period: str, seed: Spent) -> Spent:
    if period not in state.budgets:
        state.budgets = {period: seed}  # past periods are done with
    return state.budgets[period]


class InProcessBackend:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def _snapshot(self, state: _KeyState, limits: Limits, budget_seed: Spent) -> Snapshot:
        now = self._clock()
        while state.requests and state.requests[0] <= now - WINDOW:
            state.requests.popleft()
        buckets = in_window(state.tokens, now)
        state.tokens = dict(buckets)
        spent = Spent()
        if limits.budgeted:
            spent = _budget(state, _period_id(now, limits), budget_seed)
        return Snapshot(
            now=now,
            requests=len(state.requests),
            oldest_request=state.requests[0] if state.requests else None,
            newest_request=state.requests[-1] if state.requests else None,
            token_buckets=tuple(buckets),
            budget_used=spent.tokens,
            spent_micro_usd=spent.cost_micro_usd,
            in_flight=len(state.leases),
        )

    async def acquire(self, name: str, limits: Limits, lease: str, budget_seed: Spent) -> Decision:
        state = self._keys.setdefault(name, _KeyState())
        snap = self._snapshot(state, limits, budget_seed)
        decision = decide(limits, snap)
        if decision.admitted:
            if limits.rpm is not None:
                state.requests.append(snap.now)
            if limits.max_concurrent is not None:
                state.leases.add(lease)
        return decision

    async def add_usage(
        self, name: str, limits: Limits, used: Spent, budget_seed: Spent | None
    ) -> None:
        state = self._keys.setdefault(name, _KeyState())
        now = self._clock()
        if limits.tpm is not None:
            bucket = bucket_of(now)
            state.tokens[bucket] = state.tokens.get(bucket, 0) + used.tokens
        if limits.budgeted:
            period = _period_id(now, limits)
            if budget_seed is not None:
                state.budgets[period] = _budget(state, period, budget_seed) + used
            elif period in state.budgets:
                # Past usage unknown: a budget not counted yet starts later from the ledger.
                state.budgets[period] += used

    async def release(self, name: str, lease: str) -> None:
        state = self._keys.get(name)
        if state is not None:
            state.leases.discard(lease)

    async def ping(self) -> None:
        """Always reachable: the state is this process's own."""

    async def aclose(self) -> None:
        self._keys.clear()
