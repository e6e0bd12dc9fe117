"""`serve --workers 2`: two backend processes behind the one Envoy, without Redis.

Each client key is pinned to one worker, so per-key limits stay exact; a worker killed with
SIGKILL costs only the requests it had in flight and is started again; /metrics merges both
workers (SIGTERM draining every worker into the ledger: containment/test_shutdown.py). Real Envoy, real workers, the fake
upstream; loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from fake_upstream import FakeUpstream, Reply
from gateway_process import Gateway
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai_shape import assert_error, chat_body
from prometheus_client.parser import text_string_to_metric_families

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc
from typegpt_gateway.keystore.sqlite import KeyStore

CHAT = "/v1/chat/completions"
KEYS = 1_000
RPM = 3
EXTRA = 1  # requests per key past its limit
CONCURRENCY = 32
WORKER_STARTED = r"worker (\d+) started: pid (\d+)"


def _make_keys(gateway: Gateway, count: int, **limits: object) -> list[str]:
    """`count` keys written straight into the gateway's key store, before it starts (1,000
    CLI runs would take minutes)."""
    gateway.workdir.mkdir(parents=True, exist_ok=True)
    store = KeyStore(gateway.db)
    try:
        return [store.create(f"key-{number}", **limits)[1] for number in range(count)]
    finally:
        store.close()


def _worker_pids(gateway: Gateway) -> dict[int, list[int]]:
    """Every pid each worker has had, in order, from the log."""
    pids: dict[int, list[int]] = {}
    for index, pid in re.findall(WORKER_STARTED, gateway.log()):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


def _metric(gateway: Gateway, sample_name: str) -> dict[str, float]:
    """The merged /metrics' samples named `sample_name`, summed by worker."""
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text
    by_worker: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name:
                by_worker[sample.labels["worker"]] += sample.value
    return dict(by_worker)


def _envoy_balancing(gateway: Gateway) -> str:
    """Envoy's counts of what moves a key between workers: for a failure's message."""
    url = f"http://127.0.0.1:{gateway.metrics_port}/metrics/envoy"
    lines = httpx.get(url, timeout=10).text.splitlines()
    wanted = ("health_check", "upstream_rq_retry", "lb_healthy_panic", "membership_healthy")
    return "\n".join(
        line for line in lines if "grpc_backend" in line and any(word in line for word in wanted)
    )


async def _send_all(url: str, keys: list[str], per_key: int) -> dict[str, list[int]]:
    """`per_key` chat requests for each key, CONCURRENCY at a time; the statuses by key."""
    statuses: dict[str, list[int]] = {key: [] for key in keys}
    # A key's requests side by side, so that they race each other (in lanes of their own).
    jobs = [key for key in keys for _ in range(per_key)]
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def lane(lane_jobs: list[str]) -> None:
            for key in lane_jobs:
                headers = {"authorization": f"Bearer {key}"}
                reply = await client.post(CHAT, json=chat_body(), headers=headers)
                statuses[key].append(reply.status_code)

        await asyncio.gather(*(lane(jobs[i::CONCURRENCY]) for i in range(CONCURRENCY)))
    return statuses


@pytest.fixture(scope="module")
def rpm_load(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, dict[str, list[int]], int]]:
    """A two-worker gateway after RPM + EXTRA requests for each of KEYS keys of --rpm RPM:
    the gateway, the statuses by key, and the requests the upstream got."""
    gateway = Gateway(tmp_path_factory.mktemp("workers-rpm"), upstream.base_url, workers=2)
    keys = _make_keys(gateway, KEYS, rpm=RPM)
    gateway.start()
    try:
        upstream.reset_state()
        statuses = asyncio.run(_send_all(gateway.url, keys, RPM + EXTRA))
        yield gateway, statuses, len(upstream.requests)
    finally:
        gateway.stop()


def test_every_key_gets_exactly_its_rpm_across_two_workers(rpm_load):
    gateway, statuses, upstream_requests = rpm_load
    admitted = Counter(codes.count(200) for codes in statuses.values())
    refused = Counter(codes.count(429) for codes in statuses.values())
    # Each worker counting alone would admit up to twice the limit for a key split between them.
    assert admitted == {RPM: KEYS}, _envoy_balancing(gateway)
    assert refused == {EXTRA: KEYS}
    assert upstream_requests == KEYS * RPM
    assert gateway.wait_for_log("ready with 2 workers")


def test_metrics_merge_both_workers(rpm_load):
    gateway, _, _ = rpm_load
    requests = _metric(gateway, "typegpt_gateway_requests_total")
    # Both workers took a share of the keys, and the merged total is every request.
    assert set(requests) == {"0", "1"}
    assert all(count > 0 for count in requests.values())
    assert sum(requests.values()) == KEYS * (RPM + EXTRA)
    assert _metric(gateway, "typegpt_gateway_worker_up") == {"0": 1.0, "1": 1.0}


def test_each_workers_log_lines_name_it_and_each_key_stays_on_one(rpm_load):
    gateway, _, _ = rpm_load
    # Each line is written a moment after its request ends: waited for.
    deadline = time.monotonic() + 30
    while True:
        records = [json.loads(line) for line in gateway.log().splitlines() if line[:1] == "{"]
        requests = [r for r in records if r.get("logger") == "typegpt_gateway.requests"]
        if len(requests) >= KEYS * (RPM + EXTRA) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(requests) == KEYS * (RPM + EXTRA)
    workers_by_key: dict[str, set[int]] = {}
    for record in requests:
        workers_by_key.setdefault(record["key"], set()).add(record["worker"])
    assert set().union(*workers_by_key.values()) == {0, 1}
    assert all(len(found) == 1 for found in workers_by_key.values()), workers_by_key
    # serve's own lines (the workers' starts) are no worker's.
    assert all("worker" not in r for r in records if "started: pid" in r.get("message", ""))
    # What holds for the whole gateway is said once, by the first worker.
    unpriced = [r for r in records if "'gpt-5-model-router' has no price" in r["message"]]
    assert [r.get("worker") for r in unpriced] == [0], unpriced


def _message(text: str) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value=text))


def test_the_direct_grpc_port_shares_each_keys_worker(make_gateway):
    gateway = make_gateway(workers=2)
    (key,) = _make_keys(gateway, 1, rpm=2)
    gateway.start()
    headers = {"authorization": f"Bearer {key}"}
    assert httpx.post(f"{gateway.url}{CHAT}", json=chat_body(), headers=headers).status_code == 200
    request = chat_pb2.CreateChatCompletionRequest(
        params=chat_pb2.ChatCompletionParams(model="gpt-4o", messages=[_message("Hi")])
    )
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        stub.CreateChatCompletion(request, metadata=metadata, timeout=10)
        # The third request of the minute, over either port, meets the same count.
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateChatCompletion(request, metadata=metadata, timeout=10)
        # grpc.health.v1 (the container's health check) answers through Envoy too.
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_error(httpx.post(f"{gateway.url}{CHAT}", json=chat_body(), headers=headers), 429)


def test_a_killed_worker_costs_only_its_in_flight_requests(make_gateway, upstream):
    gateway = make_gateway(workers=2)
    keys = _make_keys(gateway, 20)
    gateway.start()
    slow = "slow-request-marker"
    # Long enough that every slow request is still in flight when the worker is killed.
    upstream.when(slow, Reply.json(delay=8.0))
    results: dict[str, httpx.Response | Exception] = {}
    lock = threading.Lock()

    def ask(key: str) -> None:
        body = chat_body(messages=[{"role": "user", "content": f"{slow} please"}])
        try:
            reply: httpx.Response | Exception = httpx.post(
                f"{gateway.url}{CHAT}",
                json=body,
                headers={"authorization": f"Bearer {key}"},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            reply = exc
        with lock:
            results[key] = reply

    threads = [threading.Thread(target=ask, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    assert upstream.wait_for_requests(len(keys), timeout=30)
    in_flight = _metric(gateway, "typegpt_gateway_inflight_requests")
    victim = _worker_pids(gateway)[0][0]
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join(60)

    failed = [reply for reply in results.values() if not isinstance(reply, httpx.Response)]
    assert failed == []
    statuses = Counter(reply.status_code for reply in results.values())  # type: ignore[union-attr]
    # Exactly the requests the dead worker held fail, each with an OpenAI-shaped 503.
    assert statuses == {503: in_flight["0"], 200: in_flight["1"]}, (statuses, in_flight)
    assert in_flight["0"] > 0 and in_flight["1"] > 0
    for reply in results.values():
        if reply.status_code == 503:  # type: ignore[union-attr]
            assert_error(reply, 503)  # type: ignore[arg-type]

    # The gateway keeps serving every key at once, the dead worker's too.
    upstream.reset_rules()
    for key in keys:
        reply = httpx.post(
            f"{gateway.url}{CHAT}", json=chat_body(), headers={"authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 200, reply.text
    # ... and the worker is started again, as a new process.
    assert gateway.wait_for_log(rf"worker 0 \(pid {victim}\) exited with code -9")
    deadline = time.monotonic() + 30
    while len(_worker_pids(gateway).get(0, [])) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _worker_pids(gateway)[0][1] != victim


def test_bad_upstreams_file_stops_serve_before_any_worker(tmp_path: Path, make_gateway):
    config = tmp_path / "bad.yaml"
    config.write_text("upstreams: []\n")
    gateway = make_gateway(workers=2, extra_env={"GATEWAY_CONFIG": str(config)})
    process = gateway.spawn()
    assert process.wait(60) == 1
    assert "bad config" in gateway.log()
    assert "worker 0 started" not in gateway.log()
