"""The metrics server in process, on 127.0.0.1 and a free port, over a registry of the test's
own."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from typegpt_gateway.ops import metrics

MiB = 1024 * 1024
# Some 4 MiB of text.
LARGE_REGISTRY_SERIES = 100_000


def test_a_large_registry_is_scraped_whole_plain_and_gzipped():
    registry = CollectorRegistry()
    series = Gauge("many", "One series per label value.", ("name",), registry=registry)
    for i in range(LARGE_REGISTRY_SERIES):
        series.labels(f"series-{i:06d}").set(i)
    server = metrics.MetricsServer("127.0.0.1", 0, None, registry=registry)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        for encoding in ("gzip", "identity"):
            response = httpx.get(url, headers={"accept-encoding": encoding}, timeout=30)
            assert response.status_code == 200
            assert response.headers.get("content-encoding", "identity") == encoding
            # Over 1 MiB: aiohttp gzips that on the metrics server's compressing thread.
            assert len(response.content) > MiB
            (family,) = text_string_to_metric_families(response.text)
            assert len(family.samples) == LARGE_REGISTRY_SERIES
    finally:
        server.close()
