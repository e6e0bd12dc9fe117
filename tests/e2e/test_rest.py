"""OpenAI REST through the real Envoy and gRPC server, against the fake upstream."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from fake_upstream import DEFAULT_CONTENT, Reply, make_chunk, make_completion
from gateway_process import ADMIN_KEY, UPSTREAM_KEY, free_port
from openai_shape import GUIDE_MODELS, assert_error, chat_body, sse_payloads

CHAT = "/v1/chat/completions"


@pytest.fixture
def client(gateway, api_key):
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {api_key}"}, timeout=30
    ) as http:
        yield http


# --- the happy path --------------------------------------------------------------------------


def test_non_stream_passes_upstream_json_through_byte_for_byte(client, upstream):
    answer = json.dumps(make_completion(model="gpt-4o"), indent=1).encode() + b"\n"
    upstream.enqueue(Reply.json(200, answer))
    response = client.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == answer


def test_default_completion_has_openai_shape(client):
    response = client.post(CHAT, json=chat_body())
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == DEFAULT_CONTENT


def test_stream_frames_each_upstream_event_and_ends_with_done(client, upstream):
    events = [make_chunk({"content": str(i)}) for i in range(5)]
    upstream.enqueue(Reply.stream(events))
    response = client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    assert [json.loads(p) for p in payloads[:-1]] == events
    assert response.text.endswith("data: [DONE]\n\n")


def test_stream_chunks_arrive_as_sent_not_buffered(client, upstream):
    events = [make_chunk({"content": str(i)}) for i in range(4)]
    upstream.enqueue(Reply.stream(events, delay=0.4))
    arrivals = []
    with client.stream("POST", CHAT, json=chat_body(stream=True)) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5  # four chunks and [DONE]
    # Buffering would deliver everything at once, at the end.
    assert arrivals[3] - arrivals[0] >= 0.9


def test_a_flush_interval_sends_the_first_chunk_at_once_and_the_rest_together(
    make_gateway, upstream
):
    gateway = make_gateway(extra_env={"GATEWAY_STREAM_FLUSH_INTERVAL": "0.45"}).start()
    key = gateway.wait_for_key(gateway.create_key("flush"))
    events = [make_chunk({"content": str(i)}) for i in range(8)]
    upstream.enqueue(Reply.stream(events, delay=0.1))  # 0.7 s from the first to the last
    reads: list[bytes] = []
    with httpx.stream(
        "POST",
        f"{gateway.url}{CHAT}",
        json=chat_body(stream=True),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        reads = list(response.iter_raw())
    payloads = sse_payloads(b"".join(reads).decode())
    assert [json.loads(p) for p in payloads[:-1]] == events and payloads[-1] == "[DONE]"
    # The first event goes out alone, as soon as it is read; the seven after it and [DONE]
    # wait for the interval and go out in two or three chunks instead of eight.
    assert [json.loads(p) for p in sse_payloads(reads[0].decode())] == [events[0]]
    assert 2 <= len(reads) <= 5, [sse_payloads(read.decode()) for read in reads]


def test_silent_stream_gets_keepalive_comments(client, upstream):
    # The test gateway sends a keepalive after 1 s of silence.
    upstream.enqueue(Reply.stream([make_chunk({"content": "late"})], first_delay=2.5))
    response = client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.text.startswith(": keepalive\n\n")
    assert sse_payloads(response.text)[-1] == "[DONE]"


@pytest.mark.parametrize("clean_eof", [False, True])
def test_stream_broken_by_upstream_ends_with_error_frame_not_done(client, upstream, clean_eof):
    events = [make_chunk({"content": "partial"})]
    upstream.enqueue(Reply.stream(events, done=False, clean_eof=clean_eof))
    response = client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert json.loads(payloads[0]) == events[0]
    assert "[DONE]" not in payloads
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == 502 and error["type"] == "api_error"


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_sent_with_http_200_is_an_error_with_its_message(
    client, upstream, stream
):
    # Some upstreams answer a failure (here a quota) with HTTP 200 and an error object,
    # where the answer should be; the client must not get it as a completion.
    failure = {
        "error": {"message": f"quota spent for {UPSTREAM_KEY}", "type": "insufficient_quota"}
    }
    upstream.enqueue(Reply.json(200, failure))
    response = client.post(CHAT, json=chat_body(stream=stream))
    if stream:
        assert response.status_code == 200  # the headers were sent: the error is in-band
        error = json.loads(sse_payloads(response.text)[-1])["error"]
    else:
        error = assert_error(response, 502, "api_error")
    assert error["code"] == 502 and error["message"].startswith("The upstream API failed")
    assert "quota spent" in error["message"] and UPSTREAM_KEY not in response.text


def test_an_event_that_never_ends_is_cut_at_its_cap_not_held_without_end(client, upstream):
    # One event of 17 MiB without its blank line, then nothing for a minute: the gateway
    # stops at 16 MiB held, at once, rather than grow with whatever else the upstream sends.
    first = make_chunk({"content": "partial"})
    endless = b"data: " + json.dumps(first).encode() + b"\n\ndata: " + b"x" * (17 * 1024 * 1024)
    upstream.enqueue(Reply.stream([endless, b"\n\n"], delay=60, done=False))
    began = time.monotonic()
    response = client.post(CHAT, json=chat_body(stream=True))
    payloads = sse_payloads(response.text)
    assert json.loads(payloads[0]) == first
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == 502 and "over 16,777,216 bytes" in error["message"], error
    assert time.monotonic() - began < 55  # not after the upstream's next event


@pytest.mark.parametrize("ending", ["broken", "clean-eof", "error-event"])
def test_events_waiting_for_the_flush_interval_reach_the_client_before_its_error(
    make_gateway, upstream, ending
):
    gateway = make_gateway(extra_env={"GATEWAY_STREAM_FLUSH_INTERVAL": "1"}).start()
    key = gateway.wait_for_key(gateway.create_key("flush"))
    events = [make_chunk({"content": str(i)}) for i in range(4)]
    failure = {"error": {"message": "boom", "type": "server_error"}}
    script = [*events, failure] if ending == "error-event" else events
    # The three events after the first wait (1 s) when the upstream fails 0.15 s later.
    upstream.enqueue(Reply.stream(script, delay=0.05, done=False, clean_eof=ending == "clean-eof"))
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(stream=True),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    payloads = [json.loads(p) for p in sse_payloads(response.text)]
    assert payloads[:-1] == events
    assert payloads[-1]["error"]["code"] == 502


def test_upstream_error_event_mid_stream_is_scrubbed_and_final(client, upstream):
    leak = {"error": {"message": f"boom with key {UPSTREAM_KEY}", "type": "server_error"}}
    upstream.enqueue(Reply.stream([make_chunk({"content": "a"}), leak], done=False))
    response = client.post(CHAT, json=chat_body(stream=True))
    payloads = sse_payloads(response.text)
    assert "[DONE]" not in payloads
    assert json.loads(payloads[-1])["error"]["code"] == 502
    assert UPSTREAM_KEY not in response.text


def test_http_client_grpc_headers_are_dropped(client, upstream):
    # grpc-timeout from an HTTP client must not become a server deadline that cuts the stream;
    # a malformed *-bin header must not become a 500.
    events = [make_chunk({"content": str(i)}) for i in range(3)]
    upstream.enqueue(Reply.stream(events, delay=0.6))
    response = client.post(
        CHAT,
        json=chat_body(stream=True),
        headers={"grpc-timeout": "1S", "x-trace-bin": "!!not base64!!"},
    )
    assert response.status_code == 200
    assert sse_payloads(response.text)[-1] == "[DONE]"


def test_responses_carry_no_proxy_or_grpc_internals(client, upstream):
    upstream.enqueue(Reply.json(404, {"error": {"message": "nope", "type": "x"}}))
    for response in (client.post(CHAT, json=chat_body()), client.post(CHAT, json=chat_body())):
        for name in response.headers:
            assert not name.startswith(("grpc-", "x-envoy", "x-openai-error", "x-http-status"))
        assert "server" not in response.headers


# --- lossless forwarding ---------------------------------------------------------------------


def test_request_bytes_reach_upstream_unchanged(client, upstream):
    raw = (
        b'{"messages": [{"role": "user", "content": [{"type": "text",'
        b' "text": "h\\u00e9llo \xe2\x9c\x93"}]}],'
        b' "model": "gpt-4o", "seed": 18446744073709551617, "big": 9007199254740993,'
        b' "a_parameter_from_the_future": {"nested": [1, 2.50, {"deep": null}]},'
        b' "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema":'
        b' {"type": "object", "properties": {"x": {"type": "integer", "maximum": 1E+300}}}}}}'
    )
    response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    received = upstream.last_request()
    assert received.body == raw
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_client_credentials_and_headers_do_not_reach_upstream(client, upstream, api_key):
    client.post(CHAT, json=chat_body(), headers={"x-secret-header": "s3cret", "cookie": "a=b"})
    received = upstream.last_request()
    assert api_key not in json.dumps(received.headers)
    assert "x-secret-header" not in received.headers and "cookie" not in received.headers


def test_32_mib_body_passes_and_one_byte_more_is_413(client, gateway, upstream):
    limit = 32 * 1024 * 1024
    head, tail = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "', b'"}]}'
    body = head + b"x" * (limit - len(head) - len(tail)) + tail
    assert len(body) == limit
    ok = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text[:500]
    assert upstream.last_request().body == body
    too_big = body[: -len(tail)] + b"x" + tail
    assert_error(
        client.post(CHAT, content=too_big, headers={"content-type": "application/json"}),
        413,
        "invalid_request_error",
    )


# --- errors, as the guide shows them ---------------------------------------------------------


def test_missing_key_is_401(gateway, upstream):
    response = httpx.post(f"{gateway.url}{CHAT}", json=chat_body())
    assert_error(response, 401, "authentication_error")
    assert upstream.requests == []


@pytest.mark.parametrize("header", ["Bearer sk-not-a-real-key", "Bearer", "Basic abc", "sk-x"])
def test_invalid_key_is_403_as_in_the_guide(gateway, upstream, header):
    response = httpx.post(
        f"{gateway.url}{CHAT}", json=chat_body(), headers={"authorization": header}
    )
    if header.startswith("Bearer sk"):
        error = assert_error(response, 403, "authentication_error")
        assert error["message"] == "Invalid API key"
    else:
        assert_error(response, 401, "authentication_error")
    assert upstream.requests == []


def test_revoked_key_is_refused_within_a_second(gateway):
    key = gateway.create_key("soon-revoked")
    url, headers = f"{gateway.url}/v1/models", {"authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 1.0
    while httpx.get(url, headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "a new key should work within a second"
        time.sleep(0.05)
    gateway.revoke_key("soon-revoked")
    revoked_at = time.monotonic()
    while (response := httpx.get(url, headers=headers)).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0, "revocation should apply within a second"
        time.sleep(0.05)
    assert_error(response, 403, "authentication_error")


def test_expired_key_is_403(gateway):
    key = gateway.create_key("short-lived", "--expires-in", "1s")
    time.sleep(1.6)
    response = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert "expired" in assert_error(response, 403, "authentication_error")["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "gpt-4o", "messages": [', None),
        (b"not json at all", None),
        (b'["model", "messages"]', None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"model": "gpt-4o", "messages": "hi"}', "messages"),
        (b'{"model": "gpt-4o", "messages": []}', "messages"),
        (b'{"model": "gpt-4o", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "gpt-4o", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
    ],
)
def test_bad_request_is_400_with_param(client, upstream, body, param):
    response = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == param
    assert upstream.requests == []


def test_unknown_path_is_404(client):
    assert_error(client.get("/v1/nothing-here"), 404, "invalid_request_error")
    # /v1/completions is served (RouteService): this is an OpenAI route the gateway does not.
    assert_error(client.post("/v1/images/edits", json={}), 404)


def test_unknown_model_is_404_before_any_upstream_call(client, upstream):
    error = assert_error(client.post(CHAT, json=chat_body("gpt-2")), 404, "invalid_request_error")
    assert error["param"] == "model"
    assert upstream.requests == []


def test_every_404_has_the_type_openai_gives_an_unknown_model_or_url(client):
    """Envoy answers an unknown URL, the backend an unknown model or key name: one rule
    (errors.default_error_type, written into the Lua filter) gives all of them their type."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    answers = {
        "url": client.get("/v1/nothing-here"),
        "model": client.post(CHAT, json=chat_body("gpt-2")),
        "model by id": client.get("/v1/models/not-a-model"),
        "key name": client.get("/v1/admin/keys/nobody-by-that-name", headers=admin),
    }
    types = {what: assert_error(response, 404)["type"] for what, response in answers.items()}
    assert types == dict.fromkeys(answers, "invalid_request_error")


def test_key_restricted_to_models(gateway, upstream):
    key = gateway.create_key("only-gpt-4o", "--models", "gpt-4o,o3")
    headers = {"authorization": f"Bearer {key}"}
    assert httpx.post(f"{gateway.url}{CHAT}", json=chat_body("gpt-4o"), headers=headers).is_success
    refused = httpx.post(f"{gateway.url}{CHAT}", json=chat_body("gpt-5"), headers=headers)
    assert_error(refused, 403)
    assert len(upstream.requests) == 1
    listed = httpx.get(f"{gateway.url}/v1/models", headers=headers).json()
    assert sorted(model["id"] for model in listed["data"]) == ["gpt-4o", "o3"]


def test_a_key_given_twice_is_refused_not_forwarded(gateway, upstream):
    # The gateway read the last model, an upstream keeping the first would run gpt-5.
    key = gateway.create_key("twice-gpt-4o", "--models", "gpt-4o")
    body = b'{"model": "gpt-5", "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == "model" and "'model'" in error["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 400),
        ("application/x-www-form-urlencoded", 400),
        ("application/json; charset=utf-8", 200),
        (None, 200),
    ],
)
def test_only_a_body_labelled_json_or_unlabelled_is_read(client, upstream, content_type, status):
    body = json.dumps(chat_body()).encode()
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(CHAT, content=body, headers=headers)
    if status == 200:
        assert response.status_code == 200, response.text
        assert upstream.last_request().body == body
    else:
        error = assert_error(response, 400, "invalid_request_error")
        assert "Content-Type" in error["message"]
        assert upstream.requests == []


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(chat_body()).encode("utf-16"),
        b"\xef\xbb\xbf" + json.dumps(chat_body()).encode(),
        json.dumps({**chat_body(), "temperature": float("nan")}).encode(),
        json.dumps(chat_body()).encode()[:-1] + b', "top_p": 1e999999}',
        json.dumps(chat_body()).encode()[:-1] + b', "user": "\\ud800"}',
    ],
    ids=["utf-16", "bom", "nan", "1e999999", "lone-surrogate"],
)
def test_what_is_not_strict_json_is_refused_not_forwarded(client, upstream, body):
    response = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_error(response, 400, "invalid_request_error")
    assert "could not parse the JSON body" in error["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("status", [400, 404, 422])
def test_upstream_client_errors_pass_through(client, upstream, status):
    message = f"upstream says no ({status})"
    upstream.enqueue(
        Reply.json(
            status,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": None,
                }
            },
        )
    )
    error = assert_error(client.post(CHAT, json=chat_body()), status)
    assert error["message"] == message
    assert error["param"] == "temperature"


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_our_key_is_502_and_leaks_nothing(client, upstream, status):
    upstream.enqueue(
        Reply.json(status, {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}"}})
    )
    response = client.post(CHAT, json=chat_body())
    error = assert_error(response, 502, "api_error")
    assert "TYPEGPT_API_KEY" in error["message"]
    assert UPSTREAM_KEY not in response.text and UPSTREAM_KEY[:12] not in response.text


def test_upstream_429_is_429_with_retry_after(client, upstream):
    upstream.enqueue(Reply.json(429, headers={"Retry-After": "7"}))
    response = client.post(CHAT, json=chat_body())
    assert_error(response, 429, "rate_limit_error")
    assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_upstream_5xx_is_502_without_its_body(client, upstream, status):
    trace = f"Traceback (most recent call last):\n  File app.py, line 3\nKeyError: {UPSTREAM_KEY}"
    upstream.enqueue(Reply.json(status, trace.encode(), headers={"content-type": "text/plain"}))
    response = client.post(CHAT, json=chat_body())
    assert_error(response, 502, "api_error")
    assert "Traceback" not in response.text and UPSTREAM_KEY not in response.text


def test_upstream_reset_is_502(client, upstream):
    upstream.enqueue(Reply.reset())
    assert_error(client.post(CHAT, json=chat_body()), 502, "api_error")


def test_unreachable_upstream_is_502(make_gateway):
    gw = make_gateway(upstream_url=f"http://127.0.0.1:{free_port()}/v1").start()
    key = gw.create_key("k")
    response = httpx.post(
        f"{gw.url}{CHAT}", json=chat_body(), headers={"authorization": f"Bearer {key}"}
    )
    assert_error(response, 502, "api_error")


def test_upstream_timeout_is_504(make_gateway, upstream):
    gw = make_gateway(extra_env={"GATEWAY_UPSTREAM_FIRST_BYTE_TIMEOUT": "1"}).start()
    key = gw.create_key("k")
    upstream.enqueue(Reply.hang(10))
    started = time.monotonic()
    response = httpx.post(
        f"{gw.url}{CHAT}", json=chat_body(), headers={"authorization": f"Bearer {key}"}, timeout=20
    )
    assert_error(response, 504, "timeout_error")
    assert time.monotonic() - started < 5


def test_missing_upstream_key_is_a_clear_503(make_gateway, upstream):
    gw = make_gateway(upstream_key=None).start()
    key = gw.create_key("k")
    response = httpx.post(
        f"{gw.url}{CHAT}", json=chat_body(), headers={"authorization": f"Bearer {key}"}
    )
    error = assert_error(response, 503)
    assert "not configured" in error["message"]
    assert upstream.requests == []


# --- models and health -----------------------------------------------------------------------


def test_models_list_is_the_guides_eight_in_openai_shape(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["object", "data"] and body["object"] == "list"
    assert [model["id"] for model in body["data"]] == GUIDE_MODELS
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int) and model["created"] > 0
        assert model["owned_by"]


def test_get_model(client):
    response = client.get("/v1/models/gpt-5-mini")
    assert response.status_code == 200
    assert response.json() == client.get("/v1/models").json()["data"][-1]
    assert_error(client.get("/v1/models/not-a-model"), 404)


def test_catalog_is_configurable(make_gateway):
    gw = make_gateway(extra_env={"GATEWAY_MODELS": "alpha, beta/v2"}).start()
    headers = {"authorization": f"Bearer {gw.create_key('k')}"}
    listed = httpx.get(f"{gw.url}/v1/models", headers=headers).json()
    assert [model["id"] for model in listed["data"]] == ["alpha", "beta/v2"]
    assert httpx.get(f"{gw.url}/v1/models/beta/v2", headers=headers).json()["id"] == "beta/v2"


def test_healthz_goes_through_to_the_backend(gateway):
    response = httpx.get(f"{gateway.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert httpx.get(f"{gateway.url}/readyz").json() == {"status": "ready"}
