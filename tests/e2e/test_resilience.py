"""Upstream resilience through the real Envoy and gRPC server, against fake upstreams that
misbehave on demand: retries, timeouts, cancellation, failover and cooldowns, graceful drain."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from fake_upstream import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS_PER_MESSAGE,
    FakeUpstream,
    Reply,
    make_chunk,
    make_stream_chunks,
)
from gateway_process import CLI, UPSTREAM_KEY, Gateway, free_port
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai_shape import assert_error, chat_body, sse_payloads

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

CHAT = "/v1/chat/completions"
# Short limits so that every fault shows within seconds.
FAST = {
    "GATEWAY_UPSTREAM_MAX_ATTEMPTS": "3",
    "GATEWAY_UPSTREAM_RETRY_BACKOFF": "0.05",
    "GATEWAY_UPSTREAM_RETRY_BACKOFF_MAX": "0.2",
    "GATEWAY_UPSTREAM_RETRY_DEADLINE": "3",
    "GATEWAY_UPSTREAM_COOLDOWN_AFTER": "0",
    "GATEWAY_UPSTREAM_FIRST_BYTE_TIMEOUT": "2",
    "GATEWAY_UPSTREAM_IDLE_TIMEOUT": "2",
    "GATEWAY_UPSTREAM_TOTAL_TIMEOUT": "5",
    "GATEWAY_SSE_KEEPALIVE_INTERVAL": "0.4",
}


def start(workdir: Path, upstream_url: str, **env: str) -> tuple[Gateway, str]:
    """A gateway with a key that works from its first request."""
    gw = Gateway(workdir, upstream_url, extra_env={**FAST, **env})
    workdir.mkdir(parents=True, exist_ok=True)
    key = gw.create_key("resilience")
    return gw.start(), key


def post(gw: Gateway, key: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{gw.url}{CHAT}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=timeout
    )


def grpc_params() -> chat_pb2.ChatCompletionParams:
    hello = chat_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value="Hi"))
    return chat_pb2.ChatCompletionParams(model="gpt-4o", messages=[hello])


@pytest.fixture(scope="module")
def fast(upstream: FakeUpstream, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    gw, key = start(tmp_path_factory.mktemp("fast"), upstream.base_url)
    yield gw, key
    gw.stop()


@pytest.fixture
def stub(fast) -> Iterator[tuple[chat_pb2_grpc.ChatServiceStub, tuple]]:
    """Native gRPC through Envoy's port."""
    gw, key = fast
    with grpc.insecure_channel(gw.http_target) as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel), (("authorization", f"Bearer {key}"),)


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_upstream_statuses_are_absorbed(fast, upstream, status):
    upstream.enqueue(Reply.json(status), Reply.json(status))
    response = post(*fast, chat_body())
    assert response.status_code == 200, response.text
    assert len(upstream.requests) == 3


def test_connection_reset_before_an_answer_is_retried(fast, upstream):
    upstream.enqueue(Reply.reset())
    assert post(*fast, chat_body()).status_code == 200
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_client_errors_are_never_retried(fast, upstream, status):
    upstream.enqueue(Reply.json(status))
    response = post(*fast, chat_body())
    assert response.status_code == (502 if status == 401 else status)
    assert len(upstream.requests) == 1


def test_attempts_are_bounded_and_the_last_error_is_shown(fast, upstream):
    upstream.enqueue(*[Reply.json(500)] * 5)
    assert_error(post(*fast, chat_body()), 502, "api_error")
    assert len(upstream.requests) == 3
    assert upstream.pending_replies == 2


def test_retry_after_is_honoured(fast, upstream):
    upstream.enqueue(Reply.json(429, headers={"Retry-After": "1"}))
    began = time.monotonic()
    assert post(*fast, chat_body()).status_code == 200
    assert time.monotonic() - began >= 1.0
    assert len(upstream.requests) == 2


def test_retry_after_past_the_retry_deadline_is_passed_on_at_once(fast, upstream):
    upstream.enqueue(Reply.json(429, headers={"Retry-After": "30"}))
    began = time.monotonic()
    response = post(*fast, chat_body())
    assert_error(response, 429, "rate_limit_error")
    assert response.headers["retry-after"] == "30"
    assert time.monotonic() - began < 2.5
    assert len(upstream.requests) == 1


def test_stream_is_retried_before_its_first_byte(fast, upstream):
    upstream.enqueue(Reply.json(503), Reply.reset())
    response = post(*fast, chat_body(stream=True))
    assert sse_payloads(response.text)[-1] == "[DONE]"
    assert len(upstream.requests) == 3


def test_stream_broken_midway_is_not_retried(fast, upstream):
    upstream.enqueue(Reply.stream_then_break([make_chunk({"content": "half"})]))
    payloads = sse_payloads(post(*fast, chat_body(stream=True)).text)
    assert "[DONE]" not in payloads
    assert json.loads(payloads[-1])["error"]["code"] == 502
    assert len(upstream.requests) == 1


def test_grpc_caller_gets_the_retried_answer(stub, upstream):
    chat, auth = stub
    upstream.enqueue(Reply.json(502))
    reply = chat.CreateChatCompletion(
        chat_pb2.CreateChatCompletionRequest(params=grpc_params()), metadata=auth, timeout=10
    )
    assert reply.choices[0].message.content.string_value
    assert len(upstream.requests) == 2


def test_grpc_caller_gets_unavailable_when_retries_run_out(stub, upstream):
    chat, auth = stub
    upstream.enqueue(*[Reply.json(503)] * 3)
    with pytest.raises(grpc.RpcError) as excinfo:
        chat.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(params=grpc_params()), metadata=auth, timeout=10
        )
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE


# --- timeouts ------------------------------------------------------------------------------


def test_hung_upstream_is_504_in_time_and_its_connection_is_closed(fast, upstream):
    upstream.enqueue(Reply.hang(30))
    began = time.monotonic()
    response = post(*fast, chat_body())
    elapsed = time.monotonic() - began
    error = assert_error(response, 504, "timeout_error")
    assert "no answer within 2 s" in error["message"]
    assert 1.9 <= elapsed < 4.5
    # Not retried (it may be running upstream), and the gateway hung up on it.
    assert upstream.wait_for_disconnect(1)
    assert len(upstream.requests) == 1


def test_hung_upstream_is_deadline_exceeded_for_grpc(stub, upstream):
    chat, auth = stub
    upstream.enqueue(Reply.hang(30))
    with pytest.raises(grpc.RpcError) as excinfo:
        chat.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(params=grpc_params()), metadata=auth, timeout=10
        )
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert upstream.wait_for_disconnect(1)


def test_silent_stream_gets_keepalives_then_an_error_frame(fast, upstream):
    upstream.enqueue(Reply.stream([make_chunk({"content": "a"}), make_chunk({})], delay=30))
    began = time.monotonic()
    response = post(*fast, chat_body(stream=True))
    elapsed = time.monotonic() - began
    assert response.status_code == 200
    assert response.text.count(": keepalive\n\n") >= 3
    payloads = sse_payloads(response.text)
    assert json.loads(payloads[0])["choices"][0]["delta"] == {"content": "a"}
    error = json.loads(payloads[-1])["error"]
    assert (error["code"], error["type"]) == (504, "timeout_error")
    assert "silent for 2 s" in error["message"]
    assert 1.9 <= elapsed < 4.5
    assert upstream.wait_for_disconnect(1)


def test_silent_stream_is_deadline_exceeded_for_grpc(stub, upstream):
    chat, auth = stub
    upstream.enqueue(Reply.stream(make_stream_chunks(model="gpt-4o"), first_delay=30))
    with pytest.raises(grpc.RpcError) as excinfo:
        list(
            chat.StreamChatCompletion(
                chat_pb2.StreamChatCompletionRequest(params=grpc_params()),
                metadata=auth,
                timeout=10,
            )
        )
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_total_timeout_ends_a_slow_stream(fast, upstream):
    chunks = [make_chunk({"content": str(i)}) for i in range(30)]
    upstream.enqueue(Reply.stream(chunks, delay=0.3))
    began = time.monotonic()
    payloads = sse_payloads(post(*fast, chat_body(stream=True)).text)
    assert 4.9 <= time.monotonic() - began < 7.5
    assert 5 < len(payloads) < 30
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == 504 and "not finished within 5 s" in error["message"]


# --- cancellation --------------------------------------------------------------------------


def _raw_request(gw: Gateway, key: str, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def test_client_leaving_a_non_streamed_request_cancels_the_upstream(fast, upstream):
    upstream.enqueue(Reply.hang(30))
    sock = _raw_request(*fast, chat_body())
    assert upstream.wait_for_requests(1, 5)
    sock.close()
    assert upstream.wait_for_disconnect(1.0)


def test_client_leaving_a_stream_cancels_the_upstream(fast, upstream):
    upstream.enqueue(Reply.stream(make_stream_chunks(model="gpt-4o"), delay=1.0))
    sock = _raw_request(*fast, chat_body(stream=True))
    received = b""
    while b"data: " not in received:
        received += sock.recv(65536)
    sock.close()
    assert upstream.wait_for_disconnect(1.0)


def test_grpc_cancel_of_a_unary_call_cancels_the_upstream(stub, upstream):
    chat, auth = stub
    upstream.enqueue(Reply.hang(30))
    call = chat.CreateChatCompletion.future(
        chat_pb2.CreateChatCompletionRequest(params=grpc_params()), metadata=auth, timeout=10
    )
    assert upstream.wait_for_requests(1, 5)
    call.cancel()
    assert upstream.wait_for_disconnect(1.0)
    assert call.code() == grpc.StatusCode.CANCELLED


def test_grpc_cancel_of_a_stream_cancels_the_upstream(stub, upstream):
    chat, auth = stub
    upstream.enqueue(Reply.stream(make_stream_chunks(model="gpt-4o"), delay=1.0))
    responses = chat.StreamChatCompletion(
        chat_pb2.StreamChatCompletionRequest(params=grpc_params()), metadata=auth, timeout=10
    )
    next(responses)
    responses.cancel()
    assert upstream.wait_for_disconnect(1.0)
    assert responses.code() == grpc.StatusCode.CANCELLED


# --- several upstreams ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream() as first, FakeUpstream() as second:
        yield first, second


@pytest.fixture
def a_b(pair) -> tuple[FakeUpstream, FakeUpstream]:
    for fake in pair:
        fake.reset_state()
    return pair


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """Starts gateways of this test's own; each is stopped after the test."""
    started: list[Gateway] = []

    def spawn_gateway(upstream_url: str, **env: str) -> tuple[Gateway, str]:
        gw, key = start(tmp_path / f"gw{len(started)}", upstream_url, **env)
        started.append(gw)
        return gw, key

    yield spawn_gateway
    for gw in started:
        gw.stop()


@pytest.fixture
def with_config(tmp_path: Path, spawn):
    """Starts a gateway on an upstreams file."""

    def start_with(yaml_text: str, **env: str) -> tuple[Gateway, str]:
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml_text)
        return spawn("http://127.0.0.1:9/unused", GATEWAY_CONFIG=str(config), **env)

    return start_with


def two_upstreams(
    a: FakeUpstream, b: FakeUpstream | str, extra_b: str = "", extra_a: str = ""
) -> str:
    b_url = b if isinstance(b, str) else b.base_url
    return f"""
upstreams:
  - name: a
    base_url: {a.base_url}
    api_key_env: KEY_A
    {extra_a}
  - name: b
    base_url: {b_url}
    api_key: sk-b-inline-key
    {extra_b}
"""


def test_failover_rest_and_recovery(with_config, a_b):
    a, b = a_b
    gw, key = with_config(
        two_upstreams(a, b, extra_b="priority: 1"),
        KEY_A="sk-a-from-env",
        GATEWAY_UPSTREAM_COOLDOWN_AFTER="2",
        GATEWAY_UPSTREAM_COOLDOWN="2",
    )
    other = gw.wait_for_key(gw.create_key("another-client"))
    a.enqueue(Reply.json(500))
    began = time.monotonic()
    assert post(gw, key, chat_body()).status_code == 200
    assert (len(a.requests), len(b.requests)) == (1, 1)  # moved on at once
    assert a.last_request().headers["authorization"] == "Bearer sk-a-from-env"
    assert b.last_request().headers["authorization"] == "Bearer sk-b-inline-key"
    assert time.monotonic() - began < 1.5
    assert post(gw, key, chat_body()).status_code == 200
    assert (len(a.requests), len(b.requests)) == (2, 1)  # one client's failure rests nothing
    a.enqueue(Reply.json(500))
    assert post(gw, other, chat_body()).status_code == 200
    assert (len(a.requests), len(b.requests)) == (3, 2)  # a second client's: a rests
    assert post(gw, key, chat_body()).status_code == 200
    assert (len(a.requests), len(b.requests)) == (3, 3)
    assert gw.wait_for_log("upstream 'a' rests for 2s")
    deadline = time.monotonic() + 30
    while len(a.requests) == 3 and time.monotonic() < deadline:
        assert post(gw, key, chat_body()).status_code == 200
        time.sleep(0.2)
    assert len(a.requests) == 4  # back on its own


def test_refused_connection_fails_over(with_config, a_b):
    a, _ = a_b
    closed = f"http://127.0.0.1:{free_port()}/v1"
    gw, key = with_config(two_upstreams(a, closed, extra_a="priority: 1"), KEY_A="k")
    response = post(gw, key, chat_body())
    assert response.status_code == 200, response.text
    assert len(a.requests) == 1


def test_routing_by_model_weights_and_model_names(with_config, a_b):
    a, b = a_b
    gw, key = with_config(
        two_upstreams(
            a,
            b,
            extra_a="models: [gpt-4o, gpt-5]",
            extra_b="models: [gpt-4o, o3]\n    model_map: {o3: o3-2025-04-16}",
        ),
        KEY_A="k",
    )
    for _ in range(30):
        assert post(gw, key, chat_body("gpt-4o")).status_code == 200
    assert len(a.requests) > 3 and len(b.requests) > 3  # equal weights share the load
    a.reset_state()
    b.reset_state()
    assert post(gw, key, chat_body("gpt-5")).status_code == 200
    assert (len(a.requests), len(b.requests)) == (1, 0)
    raw = (
        b'{"messages":[{"role":"user","content":"o3"}], "model" : "o3",'
        b' "seed": 18446744073709551617}'
    )
    response = httpx.post(
        f"{gw.url}{CHAT}",
        content=raw,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert response.status_code == 200
    # Only the model name changed, byte for byte.
    assert b.last_request().body == raw.replace(b'"o3",', b'"o3-2025-04-16",')
    assert_error(post(gw, key, chat_body("gpt-4.1")), 503)  # in the catalog, served by none


def test_when_every_upstream_rests_the_request_still_goes_to_one(with_config, a_b):
    a, b = a_b
    gw, key = with_config(
        two_upstreams(a, b, extra_b="priority: 1"),
        KEY_A="k",
        GATEWAY_UPSTREAM_MAX_ATTEMPTS="1",
        GATEWAY_UPSTREAM_COOLDOWN_AFTER="1",
        GATEWAY_UPSTREAM_COOLDOWN="60",
    )
    other = gw.wait_for_key(gw.create_key("another-client"))
    for fake in (a, b):  # each fails two clients' requests: a rests, then b
        fake.enqueue(Reply.json(500), Reply.json(500))
        for client in (key, other):
            assert_error(post(gw, client, chat_body()), 502)
    assert gw.wait_for_log("(?s)rests for 60s.*rests for 60s")
    # Panic routing: a's rest ends first, so a takes it; its success ends the rest.
    assert post(gw, key, chat_body()).status_code == 200
    assert (len(a.requests), len(b.requests)) == (3, 2)
    assert post(gw, other, chat_body()).status_code == 200
    assert (len(a.requests), len(b.requests)) == (4, 2)


def test_upstream_without_its_key_takes_nothing_and_is_named(with_config, a_b):
    a, b = a_b
    gw, key = with_config(two_upstreams(a, b))  # KEY_A is not set
    for _ in range(5):
        assert post(gw, key, chat_body()).status_code == 200
    assert (len(a.requests), len(b.requests)) == (0, 5)
    assert gw.wait_for_log("KEY_A is not set")
    assert "sk-b-inline-key" not in gw.log()


def test_serve_config_flag_names_the_file(tmp_path):
    config = tmp_path / "flag.yaml"
    config.write_text("upstreams: []\n")
    result = subprocess.run(
        [
            *CLI,
            "serve",
            "--config",
            str(config),
            "--grpc-port",
            "0",
            "--db",
            str(tmp_path / "k.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "flag.yaml" in result.stderr and "upstreams" in result.stderr


def test_bad_config_file_stops_the_gateway_with_a_reason(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text("upstreams:\n  - {name: a, base_url: 'http://x', wieght: 2}\n")
    gw = Gateway(
        tmp_path / "gw", "http://127.0.0.1:9/v1", extra_env={"GATEWAY_CONFIG": str(config)}
    )
    with pytest.raises(RuntimeError, match="exited early"):
        gw.start(timeout=15)
    assert gw.process is not None and gw.process.returncode == 1
    assert "wieght" in gw.log() and "Traceback" not in gw.log()


# --- graceful drain ------------------------------------------------------------------------


def _stream_in_thread(gw: Gateway, key: str) -> tuple[threading.Thread, list[str]]:
    lines: list[str] = []

    def read() -> None:
        with httpx.stream(
            "POST",
            f"{gw.url}{CHAT}",
            json=chat_body(stream=True),
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            lines.extend(response.iter_lines())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, lines


def test_sigterm_lets_a_running_stream_finish_and_refuses_new_connections(spawn, upstream):
    gw, key = spawn(upstream.base_url, GATEWAY_DRAIN_TIMEOUT="10")
    chunks = [make_chunk({"content": str(i)}) for i in range(8)]
    upstream.enqueue(Reply.stream(chunks, delay=0.4))
    thread, lines = _stream_in_thread(gw, key)
    assert upstream.wait_for_requests(1, 5)
    time.sleep(0.5)
    assert gw.process is not None
    gw.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", gw.http_port)) != 0, "still accepting"
    thread.join(15)
    payloads = [line[6:] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]" and len(payloads) == 9
    assert gw.process.wait(15) == 0
    log = gw.log()
    assert log.index("draining") < log.index("stopping Envoy")


def test_drain_timeout_ends_a_stream_with_an_error_frame(spawn, upstream):
    gw, key = spawn(upstream.base_url, GATEWAY_DRAIN_TIMEOUT="1")
    upstream.enqueue(Reply.stream([make_chunk({"content": "a"})] * 40, delay=0.25))
    thread, lines = _stream_in_thread(gw, key)
    assert upstream.wait_for_requests(1, 5)
    time.sleep(0.5)
    assert gw.process is not None
    began = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(10) == 0
    assert time.monotonic() - began < 5
    thread.join(5)
    payloads = [line[6:] for line in lines if line.startswith("data: ")]
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == 503 and "shutting down" in error["message"]
    assert upstream.wait_for_disconnect(1)


def test_draining_backend_is_not_ready_before_it_stops(spawn, upstream):
    """grpc.health and readiness turn first; the process only ends after the drain."""
    gw, key = spawn(upstream.base_url, GATEWAY_DRAIN_TIMEOUT="10")
    upstream.enqueue(Reply.stream([make_chunk({"content": "a"})] * 6, delay=0.5))
    thread, _ = _stream_in_thread(gw, key)
    assert upstream.wait_for_requests(1, 5)
    with grpc.insecure_channel(gw.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        assert gw.process is not None
        gw.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        status = None
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError as exc:
                status = exc.code()
            if status != health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.05)
        assert status in (health_pb2.HealthCheckResponse.NOT_SERVING, grpc.StatusCode.UNAVAILABLE)
        assert gw.process.poll() is None  # the stream is still being served
    thread.join(10)
    assert gw.process.wait(10) == 0
    assert UPSTREAM_KEY not in gw.log()


def test_a_request_costs_the_price_of_the_upstream_that_served_it(with_config, a_b):
    a, b = a_b
    prices = """
prices:
  gpt-4o: {input: 1, output: 1}
  o3: null
"""
    gw, key = with_config(
        two_upstreams(a, b, extra_b="priority: 1\n    prices: {gpt-4o: {input: 100, output: 100}}")
        + prices,
        KEY_A="k",
    )
    a.enqueue(Reply.json(500))
    assert post(gw, key, chat_body()).status_code == 200  # a fails: b serves it
    assert (len(a.requests), len(b.requests)) == (1, 1)
    assert post(gw, key, chat_body()).status_code == 200  # a serves it
    assert post(gw, key, chat_body("o3")).status_code == 200  # no price: unknown
    tokens = PROMPT_TOKENS_PER_MESSAGE + COMPLETION_TOKENS
    totals = gw.ledger_totals("resilience", requests=3)
    assert totals == {
        "requests": 3,
        "prompt_tokens": 3 * PROMPT_TOKENS_PER_MESSAGE,
        "completion_tokens": 3 * COMPLETION_TOKENS,
        "errors": 0,
        "cost_micro_usd": 100 * tokens + 1 * tokens,
        "unpriced_requests": 1,
        "estimated_requests": 0,
    }
    # The start-up log names the catalog's models without a price, and where.
    assert gw.wait_for_log(r"model 'o3' has no price on upstream 'a', 'b'")
    assert gw.wait_for_log(r"model 'gpt-5-model-router' has no price on upstream 'a', 'b'")
    assert "model 'gpt-4o' has no price" not in gw.log()
