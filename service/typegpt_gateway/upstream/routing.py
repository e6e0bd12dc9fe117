"""Which upstream takes a request, and when an upstream rests after failures. Pure: the clock
and the dice are passed in.

A request goes to an upstream that serves its model and is not resting, preferring one this
request has not tried yet; among those, the best (lowest) priority; among equals, one drawn
at random in proportion to its weight.

Resting never takes a model out of service. Like Envoy's panic threshold (which routes to
every host once too few are healthy) and LiteLLM (which never cools a model's only
deployment), when every upstream serving a model rests, the request goes to the one whose
rest ends first, and a success there ends its rest. With a single upstream, resting changes
nothing a client sees.

What rests an upstream is a pattern across clients, never one request (`HealthPolicy`):
- requests are judged, not attempts: the caller reports each upstream once per request, so
  one request's retries count as one failure;
- failures one client can cause on its own never suffice: an upstream rests after `after`
  failed requests within `window` seconds, from at least `clients` different client keys,
  and only while its failures outnumber its successes in that window. A prompt the upstream
  answers 500 for, sent again and again by one key, rests nothing; a real outage, which
  fails every client's requests, does;
- a Retry-After rests only the (upstream, model) pair it came from, for as long as it says.
Each rest lasts twice the one before (from `first` to `longest`) until a success.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


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
class HealthPolicy:
    # Failed requests within `window` seconds that can rest an upstream; 0 turns resting off
    # (Retry-After included).
    after: int = 3
    first: float = 1.0
    longest: float = 60.0
    window: float = 10.0
    # Distinct client keys among those failures: one client alone cannot rest an upstream.
    clients: int = 2

    @property
    def enabled(self) -> bool:
        return self.after > 0

    def rest_length(self, rests: int) -> float:
        """Seconds of the `rests`-th rest since the upstream last succeeded (1: the first)."""
        doublings = min(max(rests - 1, 0), 32)
        return min(self.longest, self.first * 2.0**doublings)


@dataclass(slots=True)
class _Health:
    # [second, successes, failures] of the last `window` seconds, oldest first.
    seconds: deque[list[int]] = field(default_factory=deque)
    # The most recent distinct clients whose requests failed here, and when (at most
    # `policy.clients` of them: enough to tell whether that many failed recently).
    failed_clients: dict[str, float] = field(default_factory=dict)
    # Failed requests since the last success (for operators: the metric and the log).
    consecutive: int = 0
    # Rests since the last success: each lasts twice the one before.
    rests: int = 0
    resting_until: float = 0.0


class Router:
    def __init__(
        self, routes: Iterable[Route], policy: HealthPolicy, rng: random.Random | None = None
    ) -> None:
        self.routes = tuple(routes)
        self._policy = policy
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not secrecy
        self._health = {route.name: _Health() for route in self.routes}
        # (upstream, model) -> end of the rest its Retry-After asked for. Bounded: models
        # reach the router only once the catalog accepted them.
        self._pair_rests: dict[tuple[str, str], float] = {}

    def serves(self, model: str) -> bool:
        return any(route.serves(model) for route in self.routes)

    def rest_ends(self, name: str, model: str) -> float:
        """When the upstream can take requests for `model` again (in the past: it can now)."""
        return max(self._health[name].resting_until, self._pair_rests.get((name, model), 0.0))

    def _awake(self, model: str, now: float) -> list[Route]:
        return [r for r in self.routes if r.serves(model) and self.rest_ends(r.name, model) <= now]

    def pick(self, model: str, now: float, avoid: Collection[str] = ()) -> Route | None:
        """The route for the next attempt (None only when no route serves `model`): an awake
        one, untried first; when all rest, the untried one whose rest ends first."""
        awake = self._awake(model, now)
        if awake:
            ready = [route for route in awake if route.name not in avoid] or awake
            best = min(route.priority for route in ready)
            tier = [route for route in ready if route.priority == best]
            return self._rng.choices(tier, weights=[route.weight for route in tier])[0]
        serving = [route for route in self.routes if route.serves(model)]
        untried = [route for route in serving if route.name not in avoid] or serving
        return min(untried, key=lambda r: (self.rest_ends(r.name, model), r.priority), default=None)

    def another_awake(self, model: str, now: float, tried: Collection[str]) -> bool:
        """Whether an awake upstream this request has not tried yet serves `model`."""
        return any(route.name not in tried for route in self._awake(model, now))

    def failed(self, name: str, now: float, client: str) -> float:
        """One request of `client` failed on upstream `name`; returns the length of the rest
        this starts (0: none)."""
        health = self._health[name]
        health.consecutive += 1
        self._count(health, now)[2] += 1
        health.failed_clients.pop(client, None)
        health.failed_clients[client] = now
        while len(health.failed_clients) > self._policy.clients:
            del health.failed_clients[next(iter(health.failed_clients))]
        resting = health.resting_until > now
        if not self._policy.enabled or resting or not self._pattern(health, now):
            return 0.0
        health.rests += 1
        length = self._policy.rest_length(health.rests)
        health.resting_until = now + length
        return length

    def succeeded(self, name: str, now: float) -> bool:
        """A request succeeded on upstream `name`; True when that ended a rest."""
        health = self._health[name]
        self._count(health, now)[1] += 1
        was_resting = health.resting_until > now
        health.consecutive = health.rests = 0
        health.resting_until = 0.0
        return was_resting

    def rate_limited(self, name: str, model: str, now: float, seconds: float) -> None:
        """The upstream asked (Retry-After) not to be sent `model` for `seconds`."""
        if not self._policy.enabled or seconds <= 0:
            return
        pair = (name, model)
        self._pair_rests[pair] = max(self._pair_rests.get(pair, 0.0), now + seconds)

    def resting(self, name: str, now: float) -> bool:
        """Whether the upstream rests for every model (a Retry-After's rest is per model)."""
        return self._health[name].resting_until > now

    def models_resting(self, name: str, now: float) -> int:
        """Models the upstream asked not to be sent for now (Retry-After)."""
        return sum(
            1 for (upstream, _), end in self._pair_rests.items() if upstream == name and end > now
        )

    def consecutive_failures(self, name: str) -> int:
        return self._health[name].consecutive

    def _count(self, health: _Health, now: float) -> list[int]:
        """The counters of the current second, after dropping those outside the window."""
        second = int(now)
        seconds = health.seconds
        while seconds and seconds[0][0] <= now - self._policy.window:
            seconds.popleft()
        if not seconds or seconds[-1][0] != second:
            seconds.append([second, 0, 0])
        return seconds[-1]

    def _pattern(self, health: _Health, now: float) -> bool:
        """Whether the failures in the window are a pattern that rests the upstream."""
        successes = sum(counts[1] for counts in health.seconds)
        failures = sum(counts[2] for counts in health.seconds)
        since = now - self._policy.window
        clients = sum(1 for at in health.failed_clients.values() if at > since)
        return (
            failures >= self._policy.after
            and clients >= self._policy.clients
            and failures > successes
        )
