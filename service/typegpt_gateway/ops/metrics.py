"""Prometheus metrics: every metric the gateway exports, in one registry (served by
metrics_server.py). Labels carry key *names*, never keys.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    platform_collector,
    process_collector,
)

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
