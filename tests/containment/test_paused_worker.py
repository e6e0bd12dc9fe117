"""Containment of a stalled worker (`serve --workers 2`): one backend process stops answering
for 5 s (SIGSTOP), then comes back (SIGCONT). The keys pinned to the other worker are served all
along; the stalled worker's requests wait for it and are answered whole once it is back."""

from __future__ import annotations

import re

import httpx
from gateway_process import Gateway
from prometheus_client.parser import text_string_to_metric_families
from steady_load import Reading, SteadyLoad, assert_contained
from test_dependencies import PAUSE_SECONDS, paused

KEYS = 12  # enough that the ring hash leaves both workers some
WORKER_STARTED = r"worker (\d+) started: pid (\d+)"


def _worker_of_each_key(gateway: Gateway) -> dict[str, str]:
    """Key name -> the worker label its requests were counted under (merged /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text
    found: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "typegpt_gateway_requests":
            for sample in family.samples:
                found.setdefault(sample.labels["key"], sample.labels["worker"])
    return found


def test_a_paused_worker_stalls_only_its_own_keys(make_gateway):
    gateway = make_gateway(workers=2).start()
    keys = {f"pinned-{index}": gateway.create_key(f"pinned-{index}") for index in range(KEYS)}
    for key in keys.values():
        gateway.wait_for_key(key)
    with SteadyLoad(gateway, list(keys.values())) as load:
        load.wait_for(60)
        workers = _worker_of_each_key(gateway)
        assert set(workers) >= set(keys), workers
        victim = "0"
        others = [keys[name] for name in keys if workers[name] != victim]
        assert others and len(others) < KEYS, workers  # both workers hold keys
        pid = int(dict(re.findall(WORKER_STARTED, gateway.log()))[victim])
        before = Reading.of(gateway)
        served_before = sum(load.succeeded_by_key[key] for key in others)
        with paused(pid):
            load.wait_for(10_000, timeout=PAUSE_SECONDS)
            served = sum(load.succeeded_by_key[key] for key in others) - served_before
        load.wait_for(60)
    assert_contained(
        "one of two workers paused 5 s",
        load,
        before,
        Reading.of(gateway),
        f"{served} answers for the other worker's keys during the pause",
    )
    assert served >= 20  # served all along the pause
