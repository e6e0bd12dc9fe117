"""Which upstream takes a request, and which are cooling down after failures. Pure: the clock
and the dice are passed in.

A request goes to an upstream that serves its model and is not cooling down, preferring one
this request has not tried yet; among those, the best (lowest) priority; among equals, one
drawn at random in proportion to its weight. An upstream that keeps failing cools down for
exponentially longer periods and comes back on its own once a period ends.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    # None: every model of the catalog.
    models: frozenset[str] | None = None
    priority: int = 0
    weight: float = 1.0

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    # Consecutive failures before the first cooldown; 0 turns cooldowns off.
    after: int = 3
    first: float = 1.0
    longest: float = 60.0

    def length(self, failures: int) -> float:
        """Seconds of cooldown after `failures` consecutive failures (0 when not yet)."""
        if self.after <= 0 or failures < self.after:
            return 0.0
        doublings = min(failures - self.after, 32)
        return min(self.longest, self.first * 2.0**doublings)


@dataclass(slots=True)
class _Health:
    failures: int = 0
    cooling_until: float = 0.0


class Router:
    def __init__(
        self, routes: Iterable[Route], cooldown: CooldownPolicy, rng: random.Random | None = None
    ) -> None:
        self.routes = tuple(routes)
        self._cooldown = cooldown
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not secrecy
        self._health = {route.name: _Health() for route in self.routes}

    def serves(self, model: str) -> bool:
        return any(route.serves(model) for route in self.routes)

    def available(self, model: str, now: float, avoid: Collection[str] = ()) -> list[Route]:
        """Routes for `model` not cooling down, those not in `avoid` only if there are any."""
        ready = [
            route
            for route in self.routes
            if route.serves(model) and self._health[route.name].cooling_until <= now
        ]
        fresh = [route for route in ready if route.name not in avoid]
        return fresh or ready

    def pick(self, model: str, now: float, avoid: Collection[str] = ()) -> Route | None:
        """The route for the next attempt, or None when every one for `model` is cooling."""
        ready = self.available(model, now, avoid)
        if not ready:
            return None
        best = min(route.priority for route in ready)
        tier = [route for route in ready if route.priority == best]
        return self._rng.choices(tier, weights=[route.weight for route in tier])[0]

    def ready_in(self, model: str, now: float) -> float:
        """Seconds until some route for `model` is out of cooldown (0: one is ready now)."""
        ends = [self._health[r.name].cooling_until for r in self.routes if r.serves(model)]
        return max(0.0, min(ends, default=math.inf) - now)

    def failed(self, name: str, now: float, retry_after: float | None = None) -> None:
        health = self._health[name]
        health.failures += 1
        length = self._cooldown.length(health.failures)
        if retry_after is not None and self._cooldown.after > 0:
            # The upstream said when to come back: no earlier, even before the threshold.
            length = max(length, retry_after)
        if length > 0:
            health.cooling_until = max(health.cooling_until, now + length)

    def succeeded(self, name: str) -> None:
        health = self._health[name]
        health.failures = 0
        health.cooling_until = 0.0

    def cooling_until(self, name: str) -> float:
        return self._health[name].cooling_until
