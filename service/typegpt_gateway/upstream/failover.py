"""The configured upstreams as one: each request is routed (routing.py), retried (retry.py)
and bounded in time (timeouts.py) until an upstream answers 2xx or the client gets an error.

Nothing here has sent the client a byte yet, which is what makes retrying safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import aiohttp

from ..errors import GatewayError
from ..ops import metrics, observe
from ..settings import Settings
from .client import CHAT_CALL, JSON, Upstream, UpstreamCall
from .retry import AttemptFailed, RetryPolicy, call_with_retries
from .routing import HealthPolicy, Route, Router
from .timeouts import Deadlines, Timeouts
from .upstreams_file import GatewayConfig, UpstreamSpec, upstream_specs

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
        self.specs = tuple(upstream.spec for upstream in self.upstreams)
        # What must be scrubbed from anything an upstream says: fixed at start, read per
        # request.
        self.secrets = tuple(secret for upstream in self.upstreams for secret in upstream.secrets)
        self.router = router
        self.policy = policy
        self.timeouts = timeouts
        self._by_name = {upstream.name: upstream for upstream in self.upstreams}
        self._export_health()

    @classmethod
    def from_settings(cls, settings: Settings, config: GatewayConfig | None) -> Failover:
        timeouts = Timeouts(
            connect=settings.upstream_connect_timeout,
            first_byte=settings.upstream_first_byte_timeout,
            idle=settings.upstream_idle_timeout,
            total=settings.upstream_total_timeout,
        )
        upstreams = [
            Upstream(spec, connect_timeout=timeouts.connect)
            for spec in upstream_specs(settings, config)
        ]
        router = Router(
            # Only upstreams with a key take requests.
            (_route(upstream.spec) for upstream in upstreams if upstream.configured),
            HealthPolicy(
                after=settings.upstream_cooldown_after,
                first=settings.upstream_cooldown,
                longest=settings.upstream_cooldown_max,
                window=settings.upstream_health_window,
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
    def unconfigured(self) -> tuple[UpstreamSpec, ...]:
        return tuple(upstream.spec for upstream in self.upstreams if not upstream.configured)

    async def aclose(self) -> None:
        await asyncio.gather(*(upstream.aclose() for upstream in self.upstreams))

    def _export_health(self) -> None:
        """Each upstream's health as gauges, read when scraped. Only here: upstream health is
        for operators and routing, never for readiness (a replica is not less able to serve
        because an upstream fails; taking every replica out at once would make it worse)."""
        for route in self.router.routes:
            self._export_upstream_health(route.name)

    def _export_upstream_health(self, name: str) -> None:
        metrics.UPSTREAM_RESTING.labels(name).set_function(
            lambda: float(self.router.resting(name, time.monotonic()))
        )
        metrics.UPSTREAM_MODELS_RESTING.labels(name).set_function(
            lambda: float(self.router.models_resting(name, time.monotonic()))
        )
        metrics.UPSTREAM_CONSECUTIVE_FAILURES.labels(name).set_function(
            lambda: float(self.router.consecutive_failures(name))
        )

    def deadlines(self) -> Deadlines:
        return Deadlines(self.timeouts, asyncio.get_running_loop().time())

    async def open(
        self,
        model: str,
        body: bytes,
        *,
        stream: bool,
        deadlines: Deadlines,
        call: UpstreamCall = CHAT_CALL,
        content_type: str = JSON,
    ) -> Opened:
        """The first 2xx answer to `call`, open, and its upstream; or raises the GatewayError
        the client gets."""
        if not self.router.serves(model):
            raise self._not_served(model)
        loop = asyncio.get_running_loop()
        request = _Request(model, observe.current().key or "", call, content_type)

        def next_upstream(failure: AttemptFailed) -> bool:
            return self.router.another_awake(model, time.monotonic(), request.tried)

        # No retry may outlive the request's own total deadline.
        budget = min(self.policy.deadline, deadlines.end - loop.time())
        try:
            response = await call_with_retries(
                lambda: self._attempt(request, body, stream, deadlines),
                replace(self.policy, deadline=budget),
                next_upstream,
                loop.time,
            )
        except AttemptFailed as failure:
            raise failure.error from None
        return Opened(response, request.tried[-1])

    async def _attempt(
        self, request: _Request, body: bytes, stream: bool, deadlines: Deadlines
    ) -> aiohttp.ClientResponse:
        route = self.router.pick(request.model, time.monotonic(), avoid=request.tried)
        if route is None:  # open() checked that some route serves the model
            raise self._not_served(request.model)
        upstream = self._by_name[route.name]
        request.tried.append(route.name)
        observe.retrying_on(route.name)
        deadlines.attempt(asyncio.get_running_loop().time())
        try:
            response = await upstream.send(
                request.call,
                upstream.body_for(request.model, body, request.call.rename),
                stream=stream,
                due=deadlines.first_byte(),
                content_type=request.content_type,
            )
        except AttemptFailed as failure:
            logger.warning("upstream %r failed: %s", upstream.name, failure.error)
            observe.upstream_failed(failure.error)
            self._judge_failure(route.name, request, failure)
            raise
        if self.router.succeeded(route.name, time.monotonic()):
            logger.info("upstream %r answers again: its rest is over", route.name)
        return response

    def _judge_failure(self, name: str, request: _Request, failure: AttemptFailed) -> None:
        """Tells the router what one failed attempt says about the upstream's health."""
        now = time.monotonic()
        if failure.retry_after is not None:
            # The upstream said when to come back, for this model: nothing else rests.
            self.router.rate_limited(name, request.model, now, failure.retry_after)
            return
        if not failure.cools or name in request.judged:
            return  # the client's own fault, or this request already counted against it
        request.judged.add(name)
        rest = self.router.failed(name, now, request.client)
        if rest > 0:
            logger.warning(
                "upstream %r rests for %gs: requests of several clients keep failing on it "
                "(%d in a row); requests go to other upstreams meanwhile, or to it if none",
                name,
                rest,
                self.router.consecutive_failures(name),
            )

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


@dataclass(frozen=True, slots=True)
class Opened:
    response: aiohttp.ClientResponse
    # The upstream that answered (the last one tried): it is its price the request costs.
    upstream: str


@dataclass(slots=True)
class _Request:
    """What failover remembers across the attempts of one request."""

    model: str
    # The client key's name: health counts distinct clients (routing.HealthPolicy).
    client: str
    call: UpstreamCall
    content_type: str
    tried: list[str] = field(default_factory=list)
    # Upstreams this request has already counted a failure against: once each.
    judged: set[str] = field(default_factory=set)


def _route(spec: UpstreamSpec) -> Route:
    return Route(spec.name, spec.models, spec.priority, spec.weight)
