"""Prometheus metrics: every metric the gateway exports, and the HTTP server that serves them.

The server listens on its own port (GATEWAY_METRICS_PORT, 9464), never the public one.
`/metrics` is the gateway's registry; `/metrics/envoy` relays Envoy's own statistics from its
admin interface, which stays bound to 127.0.0.1. Labels carry key *names*, never keys.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
    platform_collector,
    process_collector,
)
from prometheus_client.exposition import ThreadingWSGIServer

if TYPE_CHECKING:  # envoy imports logs, which imports observe, which imports this module
    from .envoy import EnvoyAdmin

logger = logging.getLogger(__name__)

# No `*_created` series beside each counter: noise for every dashboard we know of.
disable_created_metrics()
REGISTRY = CollectorRegistry()
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)

# From a fast cached answer to a reasoning model's minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "typegpt_gateway_requests",
    "Requests answered, by route, model, key name and HTTP status.",
    ("route", "model", "key", "status"),
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "typegpt_gateway_request_duration_seconds",
    "Time from request to the last byte of the answer.",
    ("route", "model"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TTFB_SECONDS = Histogram(
    "typegpt_gateway_time_to_first_byte_seconds",
    "Time from request to the first byte of a successful answer (the first chunk of a stream).",
    ("route", "model"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "typegpt_gateway_tokens",
    "Tokens the upstream reported, by direction: in (prompt) or out (completion).",
    ("model", "key", "direction"),
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "typegpt_gateway_upstream_errors",
    "Failed upstream calls, by upstream and the status the client got.",
    ("upstream", "status"),
    registry=REGISTRY,
)
UPSTREAM_RETRIES = Counter(
    "typegpt_gateway_upstream_retries",
    "Upstream calls retried (on another attempt or upstream).",
    ("upstream",),
    registry=REGISTRY,
)
LIMITER_REJECTIONS = Counter(
    "typegpt_gateway_limiter_rejections",
    "Requests refused by a key's limits, by key name and limit (rpm, tpm, ...).",
    ("key", "limit"),
    registry=REGISTRY,
)
LIMITER_IN_FLIGHT = Gauge(
    "typegpt_gateway_limiter_in_flight",
    "Concurrency slots (--max-concurrent) this process holds or has still to give back.",
    registry=REGISTRY,
)
LIMITER_UNCONFIRMED_TOKENS = Counter(
    "typegpt_gateway_limiter_unconfirmed_tokens",
    "Tokens whose count in Redis failed midway: not sent again, as Redis may have counted them.",
    registry=REGISTRY,
)
# Upstream health (routing.py): for dashboards and alerts, never for readiness.
UPSTREAM_RESTING = Gauge(
    "typegpt_gateway_upstream_resting",
    "1 while the upstream rests after failed requests of several clients (requests then go "
    "to other upstreams, or to it when every upstream of a model rests).",
    ("upstream",),
    registry=REGISTRY,
)
UPSTREAM_MODELS_RESTING = Gauge(
    "typegpt_gateway_upstream_models_resting",
    "Models the upstream asked not to be sent for now (429 with Retry-After).",
    ("upstream",),
    registry=REGISTRY,
)
UPSTREAM_CONSECUTIVE_FAILURES = Gauge(
    "typegpt_gateway_upstream_consecutive_failures",
    "Requests that failed on the upstream since its last success.",
    ("upstream",),
    registry=REGISTRY,
)
INFLIGHT_STREAMS = Gauge(
    "typegpt_gateway_inflight_streams",
    "Streamed answers being sent right now.",
    registry=REGISTRY,
)
INFLIGHT_REQUESTS = Gauge(
    "typegpt_gateway_inflight_requests",
    "Requests being handled right now, streams included.",
    registry=REGISTRY,
)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ENVOY_STATS_PATH = "/metrics/envoy"


SERVER_NAME = "typegpt-gateway"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def _envoy_app(envoy: EnvoyAdmin | None) -> WsgiApp:
    """Relays Envoy's /stats/prometheus from its admin interface."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            if envoy is None:
                raise LookupError("no Envoy runs in this process (serve --no-envoy)")
            url = envoy.url("/stats/prometheus")
            if url is None:
                raise LookupError("Envoy has not written its admin address yet")
            reply = httpx.get(url, timeout=5)
            status, body = f"{reply.status_code} Envoy", reply.content
        except (LookupError, httpx.HTTPError) as exc:
            status, body = "503 Service Unavailable", f"Envoy stats unavailable: {exc}\n".encode()
        start_response(status, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
        return [body]

    return app


class MetricsServer:
    """The metrics HTTP server, on a thread of its own so that scrapes never wait on the loop."""

    def __init__(self, host: str, port: int, envoy_admin: EnvoyAdmin | None) -> None:
        gateway = make_wsgi_app(REGISTRY)
        envoy = _envoy_app(envoy_admin)

        def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            def unbranded(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
                # Our own Server header, so that wsgiref does not announce its and Python's
                # versions.
                return start_response(status, [*headers, ("Server", SERVER_NAME)], *exc_info)

            if environ.get("PATH_INFO") == ENVOY_STATS_PATH:
                return envoy(environ, unbranded)
            return gateway(environ, unbranded)

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._server = make_server(
            host, port, route, server_class=Server, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
