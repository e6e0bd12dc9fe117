"""What operators see: x-request-id end to end, one JSON log line per request, Prometheus
metrics on their own port (the gateway's and Envoy's), health and readiness — all on a real
`typegpt-gateway serve` with the fake upstream."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fake_upstream import Reply, make_chunk, make_usage, make_usage_chunk
from gateway_process import ADMIN_KEY, CLI, UPSTREAM_KEY, Gateway
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai_shape import assert_error, chat_body
from prometheus_client.parser import text_string_to_metric_families

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc
from typegpt_gateway.ops import metrics_server, observe

CHAT = "/v1/chat/completions"
LOG_WAIT = 5.0
UUID_LENGTH = 36


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def request_lines(gateway: Gateway) -> list[dict[str, Any]]:
    lines = []
    for line in gateway.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "typegpt_gateway.requests":
                lines.append(record)
    return lines


def request_line(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The one log line of that request (it is written as the RPC ends, so wait a little)."""
    deadline = time.monotonic() + LOG_WAIT
    while True:
        found = [line for line in request_lines(gateway) if line["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1, found
    return found[0]


def scrape(gateway: Gateway, path: str = "/metrics") -> str:
    response = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample, 0 when it does not exist yet."""
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return item.value
    return 0.0


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- x-request-id ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "returned"),
    [
        ("client-5f0c7d1e-honoured-as-sent", "client-5f0c7d1e-honoured-as-sent"),
        # Too long, and with a tab: cut to an id the backend takes, so that the client gets
        # back the id that was logged and sent upstream.
        ("long\t" + "x" * 300, ("long" + "x" * 300)[: observe.MAX_REQUEST_ID_CHARS]),
    ],
)
def test_a_client_request_id_is_honoured_passed_upstream_logged_and_returned(
    gateway, api_key, upstream, sent, returned
):
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(),
        headers={**auth(api_key), "x-request-id": sent},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == [returned]
    assert upstream.last_request().headers["x-request-id"] == returned
    line = request_line(gateway, returned)
    assert line["status"] == 200 and line["key"] == "test-client"


def test_a_request_id_is_generated_when_the_client_sends_none(gateway, api_key, upstream):
    response = httpx.post(
        f"{gateway.url}{CHAT}", json=chat_body(), headers=auth(api_key), timeout=30
    )
    request_id = response.headers["x-request-id"]
    assert len(request_id) == UUID_LENGTH
    assert upstream.last_request().headers["x-request-id"] == request_id
    request_line(gateway, request_id)


def test_streams_carry_the_request_id(gateway, api_key):
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(stream=True),
        headers={**auth(api_key), "x-request-id": "stream-id-1"},
        timeout=30,
    )
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-request-id"] == "stream-id-1"


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", CHAT, {}, 401),  # Envoy's answer on the headers
        ("POST", CHAT, auth("sk-not-a-key"), 403),  # the backend's error
        ("GET", "/v1/nowhere", auth("sk-not-a-key"), 404),  # Envoy's own reply
        ("GET", "/v1/admin/keys", {}, 401),
    ],
)
def test_errors_carry_the_request_id(gateway, method, path, headers, status):
    response = httpx.request(
        method,
        f"{gateway.url}{path}",
        json=chat_body(),
        headers={**headers, "x-request-id": f"err-{status}"},
        timeout=30,
    )
    assert_error(response, status)
    assert response.headers["x-request-id"] == f"err-{status}"


def test_native_grpc_gets_the_request_id_in_metadata(gateway, api_key):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        _, call = stub.ListModels.with_call(
            chat_pb2.ListModelsRequest(),
            metadata=(*auth(api_key).items(), ("x-request-id", "grpc-id-1")),
            timeout=10,
        )
        assert dict(call.initial_metadata())["x-request-id"] == "grpc-id-1"
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.ListModels(chat_pb2.ListModelsRequest(), timeout=10)
    generated = dict(excinfo.value.trailing_metadata())["x-request-id"]
    assert len(generated) == UUID_LENGTH
    assert request_line(gateway, generated)["status"] == 401


# --- the request log -------------------------------------------------------------------------


def test_typed_grpc_calls_are_logged_with_their_tokens(gateway, api_key):
    question = chat_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value="Hi"))
    params = chat_pb2.ChatCompletionParams(model="gpt-4o", messages=[question])
    metadata = (*auth(api_key).items(), ("x-request-id", "typed-1"))
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        stub.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(params=params), metadata=metadata, timeout=10
        )
        request = chat_pb2.StreamChatCompletionRequest(params=params, include_usage=True)
        chunks = list(
            stub.StreamChatCompletion(
                request, metadata=(*metadata[:1], ("x-request-id", "typed-2")), timeout=10
            )
        )
    assert chunks
    unary, streamed = request_line(gateway, "typed-1"), request_line(gateway, "typed-2")
    assert unary["route"] == "ChatService/CreateChatCompletion" and unary["stream"] is False
    assert streamed["route"] == "ChatService/StreamChatCompletion" and streamed["stream"] is True
    for line in (unary, streamed):
        assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 7)
        assert line["status"] == 200 and line["key"] == "test-client"


def test_one_json_line_per_request_with_the_operators_fields(gateway, upstream):
    name = unique("logged")
    key = gateway.create_key(name)
    upstream.enqueue(
        Reply.stream([make_chunk({"content": "hi"}), make_usage_chunk(make_usage(11, 3))])
    )
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
        headers={**auth(key), "x-request-id": "log-fields-1"},
        timeout=30,
    )
    assert response.status_code == 200
    line = request_line(gateway, "log-fields-1")
    assert line["route"] == "ChatService/CreateChatCompletionHttp"
    assert line["key"] == name and line["model"] == "gpt-4o" and line["stream"] is True
    assert line["status"] == 200 and line["error_type"] is None
    assert (line["prompt_tokens"], line["completion_tokens"]) == (11, 3)
    assert line["tokens_estimated"] is False
    assert line["upstream"] == "typegpt" and line["retries"] == 0
    assert 0 < line["ttfb_ms"] <= line["latency_ms"]
    assert line["level"] == "INFO" and line["time"]


def test_a_failed_request_is_logged_with_its_status_and_error_type(gateway, api_key, upstream):
    upstream.enqueue(Reply.json(500, {"error": {"message": "boom"}}))
    httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(),
        headers={**auth(api_key), "x-request-id": "log-fail-1"},
        timeout=30,
    )
    line = request_line(gateway, "log-fail-1")
    assert (line["status"], line["error_type"], line["ttfb_ms"]) == (502, "api_error", None)


def test_no_key_and_no_prompt_reach_the_log(gateway, upstream):
    key = gateway.create_key(unique("secretive"))
    prompt = f"my secret prompt {uuid.uuid4()}"
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
    headers = {**auth(key), "x-request-id": "log-secret-1"}
    assert (
        httpx.post(f"{gateway.url}{CHAT}", json=body, headers=headers, timeout=30).status_code
        == 200
    )
    request_line(gateway, "log-secret-1")
    log = gateway.log()
    for secret in (key, UPSTREAM_KEY, ADMIN_KEY, prompt):
        assert secret not in log


def test_bodies_are_logged_only_when_asked(make_gateway):
    gw = make_gateway(extra_env={"GATEWAY_LOG_BODIES": "true"}).start()
    key = gw.create_key("debugging")
    prompt = f"debug this {uuid.uuid4()}"
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
    httpx.post(
        f"{gw.url}{CHAT}", json=body, headers={**auth(key), "x-request-id": "b1"}, timeout=30
    )
    line = request_line(gw, "b1")
    assert json.loads(line["request_body"]) == body
    assert key not in gw.log()


def test_time_to_first_byte_is_the_first_chunk_not_a_keepalive(gateway, api_key, upstream):
    # The gateway under test sends a keepalive comment after each second of silence.
    first_delay = 2.5
    upstream.enqueue(Reply.stream([make_chunk({"content": "late"})], first_delay=first_delay))
    request_id = unique("ttfb")
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(stream=True),
        headers={**auth(api_key), "x-request-id": request_id},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.text.startswith(": keepalive"), response.text[:100]
    assert request_line(gateway, request_id)["ttfb_ms"] >= first_delay * 1000


# --- metrics ---------------------------------------------------------------------------------


def test_requests_tokens_and_latency_are_counted_by_key_name(gateway, upstream):
    name = unique("metered")
    key = gateway.create_key(name)
    before = scrape(gateway)
    for _ in range(2):
        response = httpx.post(
            f"{gateway.url}{CHAT}", json=chat_body(), headers=auth(key), timeout=30
        )
        assert response.status_code == 200
    upstream.enqueue(Reply.json(500, {"error": {"message": "boom"}}))
    httpx.post(f"{gateway.url}{CHAT}", json=chat_body(), headers=auth(key), timeout=30)
    request_line(gateway, response.headers["x-request-id"])
    time.sleep(0.2)  # the last RPC's metrics land as it ends
    after = scrape(gateway)

    route = "ChatService/CreateChatCompletionHttp"
    ok = {"route": route, "model": "gpt-4o", "key": name}
    assert sample(after, "typegpt_gateway_requests_total", **ok, status="200") == 2
    assert sample(after, "typegpt_gateway_requests_total", **ok, status="502") == 1
    # The fake upstream reports 5 prompt and 7 completion tokens per answer.
    assert sample(after, "typegpt_gateway_tokens_total", key=name, direction="in") == 10
    assert sample(after, "typegpt_gateway_tokens_total", key=name, direction="out") == 14
    for histogram in ("request_duration_seconds", "time_to_first_byte_seconds"):
        metric = f"typegpt_gateway_{histogram}_count"
        labels = {"route": route, "model": "gpt-4o"}
        assert sample(after, metric, **labels) - sample(before, metric, **labels) >= 2
    errors = "typegpt_gateway_upstream_errors_total"
    assert sample(after, errors, upstream="typegpt", status="502") > sample(
        before, errors, upstream="typegpt", status="502"
    )
    assert key not in after and UPSTREAM_KEY not in after


def test_a_model_name_outside_the_catalog_makes_no_series(gateway, api_key):
    # The rules (the "unknown" label whatever the name, the name cut in the log) are
    # tests/ops/test_observe.py's; here, that the catalog's answer reaches them.
    model = unique("probe")
    request_id = unique("probe")
    requests = "typegpt_gateway_requests_total"
    counted = {
        "route": "ChatService/CreateChatCompletionHttp",
        "model": "unknown",
        "key": "test-client",  # api_key's name
        "status": "404",
    }
    before = sample(scrape(gateway), requests, **counted)
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(model),
        headers={**auth(api_key), "x-request-id": request_id},
        timeout=30,
    )
    assert_error(response, 404)
    assert request_line(gateway, request_id)["model"] == model
    deadline = time.monotonic() + LOG_WAIT  # the metrics land just after the log line
    while sample(after := scrape(gateway), requests, **counted) == before:
        assert time.monotonic() < deadline, "the request was never counted"
        time.sleep(0.05)
    assert sample(after, requests, **counted) == before + 1
    assert model not in after


def test_streams_are_counted_in_flight_and_their_usage_counted(gateway, upstream):
    name = unique("streamer")
    key = gateway.create_key(name)
    chunks = [make_chunk({"content": str(i)}) for i in range(3)]
    upstream.enqueue(Reply.stream([*chunks, make_usage_chunk(make_usage(4, 9))], delay=0.5))
    with httpx.stream(
        "POST",
        f"{gateway.url}{CHAT}",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
        headers=auth(key),
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert sample(scrape(gateway), "typegpt_gateway_inflight_streams") >= 1
        for _ in lines:
            pass
    request_line(gateway, response.headers["x-request-id"])
    after = scrape(gateway)
    assert sample(after, "typegpt_gateway_tokens_total", key=name, direction="in") == 4
    assert sample(after, "typegpt_gateway_tokens_total", key=name, direction="out") == 9


def test_a_client_leaving_mid_stream_is_logged_499_and_no_stream_stays_in_flight(gateway, upstream):
    key = gateway.create_key(unique("leaver"))
    # The session's gateway may still be finishing another test's stream: compare with that.
    before = sample(scrape(gateway), "typegpt_gateway_inflight_streams")
    upstream.enqueue(Reply.stream([make_chunk({"content": str(i)}) for i in range(30)], delay=0.3))
    headers = {**auth(key), "x-request-id": "leaver-1"}
    with httpx.stream(
        "POST", f"{gateway.url}{CHAT}", json=chat_body(stream=True), headers=headers, timeout=30
    ) as response:
        next(line for line in response.iter_lines() if line.startswith("data: "))
    assert request_line(gateway, "leaver-1")["status"] == 499
    deadline = time.monotonic() + LOG_WAIT
    while sample(scrape(gateway), "typegpt_gateway_inflight_streams") > before:
        assert time.monotonic() < deadline, "a finished stream is still counted in flight"
        time.sleep(0.1)


def test_a_stream_is_counted_even_when_its_client_did_not_ask_for_usage(gateway, upstream):
    name = unique("quiet")
    key = gateway.create_key(name)
    response = httpx.post(
        f"{gateway.url}{CHAT}", json=chat_body(stream=True), headers=auth(key), timeout=30
    )
    assert response.status_code == 200 and '"usage":{' not in response.text.replace(" ", "")
    line = request_line(gateway, response.headers["x-request-id"])
    # The gateway asked the upstream for usage and kept that chunk from the client.
    assert upstream.last_request().json()["stream_options"] == {"include_usage": True}
    assert line["prompt_tokens"] > 0 and line["tokens_estimated"] is False
    after = scrape(gateway)
    assert (
        sample(after, "typegpt_gateway_tokens_total", key=name, direction="in")
        == (line["prompt_tokens"])
    )


def test_limiter_rejections_are_logged_and_counted_by_key_and_limit(gateway):
    name = unique("limited")
    key = gateway.wait_for_key(gateway.create_key(name, "--rpm", "1"))
    statuses = []
    for _ in range(2):
        response = httpx.post(
            f"{gateway.url}{CHAT}", json=chat_body(), headers=auth(key), timeout=30
        )
        statuses.append(response.status_code)
    assert statuses == [200, 429]
    line = request_line(gateway, response.headers["x-request-id"])
    assert (line["status"], line["error_type"], line["key"]) == (429, "rate_limit_error", name)
    assert line["upstream"] is None and line["prompt_tokens"] is None
    text = scrape(gateway)
    assert sample(text, "typegpt_gateway_limiter_rejections_total", key=name, limit="rpm") == 1
    assert sample(text, "typegpt_gateway_requests_total", key=name, status="429") == 1


def test_retries_and_rests_show_in_the_log_and_metrics_but_never_in_readiness(
    make_gateway, upstream
):
    gw = make_gateway(
        extra_env={
            "GATEWAY_UPSTREAM_MAX_ATTEMPTS": "3",
            "GATEWAY_UPSTREAM_RETRY_BACKOFF": "0.05",
            "GATEWAY_UPSTREAM_RETRY_BACKOFF_MAX": "0.1",
            "GATEWAY_UPSTREAM_COOLDOWN_AFTER": "2",
            "GATEWAY_UPSTREAM_COOLDOWN": "60",
            "GATEWAY_UPSTREAM_COOLDOWN_MAX": "60",
        }
    ).start()
    key, other = gw.create_key("retried"), gw.create_key("retried-too")
    upstream.enqueue(Reply.json(500, {"error": {"message": "boom"}}))
    headers = {**auth(key), "x-request-id": "retried-1"}
    assert httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers=headers, timeout=30).is_success
    line = request_line(gw, "retried-1")
    assert (line["status"], line["upstream"], line["retries"]) == (200, "typegpt", 1)
    text = scrape(gw)
    assert sample(text, "typegpt_gateway_upstream_retries_total", upstream="typegpt") == 1
    errors = "typegpt_gateway_upstream_errors_total"
    assert sample(text, errors, upstream="typegpt", status="502") == 1
    assert sample(text, "typegpt_gateway_upstream_consecutive_failures", upstream="typegpt") == 0
    assert sample(text, "typegpt_gateway_upstream_resting", upstream="typegpt") == 0

    # Requests of two clients fail, three attempts each: the only upstream rests...
    upstream.enqueue(*[Reply.json(500, {"error": {"message": "boom"}})] * 6)
    for client in (key, other):
        assert_error(httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers=auth(client)), 502)
    text = scrape(gw)
    assert sample(text, errors, upstream="typegpt", status="502") == 7
    # ...counted once per request, not per attempt.
    assert sample(text, "typegpt_gateway_upstream_consecutive_failures", upstream="typegpt") == 2
    assert sample(text, "typegpt_gateway_upstream_resting", upstream="typegpt") == 1
    assert gw.wait_for_log("upstream 'typegpt' rests for 60s")
    # ...yet this replica stays ready, and the upstream still takes requests (it is the only
    # one): its success ends the rest.
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    assert httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers=auth(key)).is_success
    assert sample(scrape(gw), "typegpt_gateway_upstream_resting", upstream="typegpt") == 0
    assert gw.wait_for_log("upstream 'typegpt' answers again")


def test_envoy_stats_are_relayed_and_metrics_are_not_on_the_public_port(gateway):
    envoy = scrape(gateway, "/metrics/envoy")
    assert "envoy_cluster_upstream_rq" in envoy
    # With a key, or Envoy answers 401 before looking for the path.
    for path in ("/metrics", "/stats/prometheus"):
        assert_error(httpx.get(f"{gateway.url}{path}", headers=auth("sk-not-a-key")), 404)


def test_a_busy_metrics_port_stops_serve_with_a_clear_error(tmp_path, upstream):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = Gateway(tmp_path / "gw", upstream.base_url, metrics_port=port)
        gw.extra_env["GATEWAY_METRICS_HOST"] = "127.0.0.1"
        with pytest.raises(RuntimeError, match="metrics server could not start"):
            gw.start(timeout=20)
    assert gw.process is not None and gw.process.wait(10) == 1


MiB = 1024 * 1024


def _threads_and_rss(pid: int) -> tuple[int, int]:
    """The process's thread count and resident memory in bytes."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["Threads"]), int(status["VmRSS"].split()[0]) * 1024


def _wait_closed_by_peer(sockets: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Those of `sockets` the other side has not closed within `timeout`."""
    open_ = list(sockets)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(open_, [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            try:
                closed = sock.recv(1 << 16) == b""
            except OSError:  # reset
                closed = True
            if closed:
                open_.remove(sock)
    return open_


def test_idle_and_half_sent_connections_cannot_exhaust_the_metrics_port(make_gateway):
    gw = make_gateway().start()
    assert gw.process is not None
    scrape(gw)
    threads_before, rss_before = _threads_and_rss(gw.process.pid)
    files_before = len(os.listdir(f"/proc/{gw.process.pid}/fd"))
    address = ("127.0.0.1", gw.metrics_port)
    sockets = [socket.create_connection(address, timeout=5) for _ in range(200)]
    try:
        for i in range(10):
            sock = socket.create_connection(address, timeout=5)
            sockets.append(sock)
            if i % 2:  # headers that never end
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nX-Never-Ends: a")
            else:  # a body that never ends
                sock.sendall(
                    b"POST /metrics HTTP/1.1\r\nHost: metrics\r\n"
                    b"Content-Length: 100000000\r\n\r\n" + b"x" * 65536
                )
        began = time.monotonic()
        text = httpx.get(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).text
        assert time.monotonic() - began < 5
        assert "typegpt_gateway_inflight_requests" in text
        threads, rss = _threads_and_rss(gw.process.pid)
        assert threads <= threads_before + 3, (threads_before, threads)
        assert rss - rss_before < 50 * MiB, (rss_before, rss)
        # The cap holds within one burst of accepts: at most MAX_CONNECTIONS sockets stay.
        files = len(os.listdir(f"/proc/{gw.process.pid}/fd"))
        assert files <= files_before + metrics_server.MAX_CONNECTIONS + 1, (files_before, files)
        left_open = _wait_closed_by_peer(sockets, metrics_server.IDLE_TIMEOUT + 5)
        assert not left_open, f"{len(left_open)} connections still open"
    finally:
        for sock in sockets:
            sock.close()
    assert "typegpt_gateway_inflight_requests" in scrape(gw)


def test_metrics_port_zero_turns_metrics_off(make_gateway):
    gw = make_gateway(metrics_port=0).start()
    assert "metrics on" not in gw.log()


# --- health ----------------------------------------------------------------------------------


def test_healthz_and_readyz(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gateway.url}/readyz").json() == {"status": "ready"}


def test_readyz_fails_when_the_key_store_cannot_be_read(make_gateway):
    gw = make_gateway().start()
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    gw.db.rename(gw.db.with_suffix(".moved"))
    response = httpx.get(f"{gw.url}/readyz")
    error = assert_error(response, 503)
    assert "key store" in error["message"]
    # Liveness does not depend on it.
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_grpc_health_per_service(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in (
            "",
            "typegpt.gateway.v1.ChatService",
            "typegpt.gateway.v1.KeyService",
            "typegpt.gateway.v1.StatusService",
        ):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_cli_health_command(gateway):
    result = subprocess.run(
        [*CLI, "health", "--target", gateway.grpc_target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "serving" in result.stdout
