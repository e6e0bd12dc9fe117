"""The metrics server in process, on 127.0.0.1 and a free port, over a registry of the test's
own."""

from __future__ import annotations

import threading

import httpx
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from typegpt_gateway.ops import metrics_server

MiB = 1024 * 1024
# Some 4 MiB of text.
LARGE_REGISTRY_SERIES = 100_000


def test_a_large_registry_is_scraped_whole_plain_and_gzipped():
    registry = CollectorRegistry()
    series = Gauge("many", "One series per label value.", ("name",), registry=registry)
    for i in range(LARGE_REGISTRY_SERIES):
        series.labels(f"series-{i:06d}").set(i)
    server = metrics_server.MetricsServer("127.0.0.1", 0, None, registry=registry)
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


def test_envoy_stats_are_asked_on_the_metrics_thread_and_relayed_as_answered():
    asked_on: list[str] = []

    async def envoy_stats() -> tuple[int, bytes]:
        asked_on.append(threading.current_thread().name)
        return 200, b"envoy_server_live 1\n"

    async def envoy_down() -> tuple[int, bytes]:
        raise metrics_server.StatsUnavailable("Envoy did not answer")

    answers = {}
    for name, stats in (("up", envoy_stats), ("down", envoy_down), ("none", None)):
        server = metrics_server.MetricsServer("127.0.0.1", 0, stats, registry=CollectorRegistry())
        try:
            url = f"http://127.0.0.1:{server.port}{metrics_server.ENVOY_STATS_PATH}"
            answers[name] = httpx.get(url, timeout=30)
        finally:
            server.close()
    assert asked_on == ["metrics"]
    assert (answers["up"].status_code, answers["up"].text) == (200, "envoy_server_live 1\n")
    assert answers["down"].status_code == 503
    assert answers["down"].text == "Envoy stats unavailable: Envoy did not answer\n"
    assert answers["none"].status_code == 503
    assert answers["none"].text == (
        "Envoy stats unavailable: no Envoy runs in this process (serve --no-envoy)\n"
    )
    for answer in answers.values():
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
