"""The configured upstreams as one: each request is routed (routing.py), retried (retry.py)
and bounded in time (timeouts.py) until an upstream answers 2xx or the client gets an error.

Nothing here has sent the client a byte yet, which is what makes retrying safe.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import aiohttp

from . import observe
from .config import UpstreamSpec, upstream_specs
from .errors import GatewayError
from .retry import AttemptFailed, RetryPolicy, call_with_retries
from .routing import CooldownPolicy, Route, Router
from .settings import Settings
from .timeouts import Deadlines, Timeouts
from .upstream import Upstream

logger = logging.getLogger(__name__)


class Failover:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        router: Router,
        policy: RetryPolicy,
        timeouts: Timeouts,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.router = router
        self.policy = policy
        self.timeouts = timeouts
        self._by_name = {upstream.name: upstream for upstream in self.upstreams}

    @classmethod
    def from_settings(cls, settings: Settings) -> Failover:
        timeouts = Timeouts(
            connect=settings.upstream_connect_timeout,
            first_byte=settings.upstream_first_byte_timeout,
            idle=settings.upstream_idle_timeout,
            total=settings.upstream_total_timeout,
        )
        upstreams = [
            Upstream(spec, connect_timeout=timeouts.connect) for spec in upstream_specs(settings)
        ]
        router = Router(
            # Only upstreams with a key take requests.
            (_route(upstream.spec) for upstream in upstreams if upstream.configured),
            CooldownPolicy(
                after=settings.upstream_cooldown_after,
                first=settings.upstream_cooldown,
                longest=settings.upstream_cooldown_max,
            ),
        )
        policy = RetryPolicy(
            attempts=settings.upstream_max_attempts,
            deadline=settings.upstream_retry_deadline,
            backoff=settings.upstream_retry_backoff,
            backoff_max=settings.upstream_retry_backoff_max,
        )
        return cls(upstreams, router, policy, timeouts)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(secret for upstream in self.upstreams for secret in upstream.secrets)

    @property
    def unconfigured(self) -> tuple[UpstreamSpec, ...]:
        return tuple(upstream.spec for upstream in self.upstreams if not upstream.configured)

    async def aclose(self) -> None:
        await asyncio.gather(*(upstream.aclose() for upstream in self.upstreams))

    def readiness_check(self) -> Callable[[], str | None]:
        """For readiness: ready while at least one upstream can take a request now."""
        loop = asyncio.get_running_loop()

        def upstreams() -> str | None:
            routes = self.router.routes
            if not routes:
                return "no upstream has an API key"
            now = loop.time()
            if all(self.router.cooling_until(route.name) > now for route in routes):
                return "every upstream is cooling down after failures"
            return None

        return upstreams

    def deadlines(self) -> Deadlines:
        return Deadlines(self.timeouts, asyncio.get_running_loop().time())

    async def open(
        self, model: str, body: bytes, *, stream: bool, deadlines: Deadlines
    ) -> aiohttp.ClientResponse:
        """The first 2xx answer's open response, or raises the GatewayError the client gets."""
        if not self.router.serves(model):
            raise self._not_served(model)
        loop = asyncio.get_running_loop()
        tried: list[str] = []

        def next_upstream(failure: AttemptFailed) -> tuple[bool, float]:
            now = loop.time()
            ready = self.router.available(model, now, tried)
            return any(route.name not in tried for route in ready), self.router.ready_in(model, now)

        # No retry may outlive the request's own total deadline.
        budget = min(self.policy.deadline, deadlines.end - loop.time())
        try:
            return await call_with_retries(
                lambda: self._attempt(model, body, stream, deadlines, tried),
                replace(self.policy, deadline=budget),
                next_upstream,
                loop.time,
            )
        except AttemptFailed as failure:
            raise failure.error from None

    async def _attempt(
        self, model: str, body: bytes, stream: bool, deadlines: Deadlines, tried: list[str]
    ) -> aiohttp.ClientResponse:
        loop = asyncio.get_running_loop()
        now = loop.time()
        route = self.router.pick(model, now, avoid=tried)
        if route is None:
            raise self._all_cooling(model, self.router.ready_in(model, now))
        upstream = self._by_name[route.name]
        tried.append(route.name)
        observe.retrying_on(route.name)
        deadlines.attempt(now)
        try:
            response = await upstream.open_chat(
                upstream.body_for(model, body), stream=stream, due=deadlines.first_byte()
            )
        except AttemptFailed as failure:
            logger.warning("upstream %r failed: %s", upstream.name, failure.error)
            observe.upstream_failed(failure.error)
            if failure.cools:
                self.router.failed(route.name, loop.time(), failure.retry_after)
            raise
        self.router.succeeded(route.name)
        return response

    def _not_served(self, model: str) -> GatewayError:
        missing = [spec.key_setting for spec in self.unconfigured if _route(spec).serves(model)]
        if missing:
            return GatewayError(
                503,
                "The gateway's upstream API key is not configured: the operator must set "
                f"{' or '.join(missing)}.",
                "api_error",
            )
        return GatewayError(503, f"No upstream is configured to serve the model {model!r}.")

    @staticmethod
    def _all_cooling(model: str, ready_in: float) -> GatewayError:
        seconds = max(1, math.ceil(ready_in))
        return GatewayError(
            503,
            f"Every upstream serving {model!r} failed recently and is cooling down; "
            f"retry in {seconds} s.",
            "api_error",
            headers=(("retry-after", str(seconds)),),
        )


def _route(spec: UpstreamSpec) -> Route:
    return Route(spec.name, spec.models, spec.priority, spec.weight)
