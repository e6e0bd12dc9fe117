"""Per-key limits through the real Envoy and gRPC server, against the fake upstream."""

from __future__ import annotations

import json
import threading
import time

import grpc
import httpx
import pytest
from fake_upstream import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS_PER_MESSAGE,
    STREAM_OPTIONS_REFUSED,
    Reply,
    make_chunk,
    prompt_tokens_of_body,
)
from gateway_process import Gateway
from openai_shape import assert_error, chat_body, sse_payloads
from spend_budget import (
    BUDGET_USD,
    assert_budget_held,
    ledger_cost,
    spend_until_refused,
)

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.limits.rules import dollars

CHAT = "/v1/chat/completions"
TOKENS_PER_CALL = PROMPT_TOKENS_PER_MESSAGE + COMPLETION_TOKENS  # the fake's usage for chat_body()
# What an upstream without stream_options answers a body that has them.
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)


def _client(gateway: Gateway, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _key(gateway: Gateway, name: str, *options: str) -> str:
    return gateway.wait_for_key(gateway.create_key(name, *options))


def test_rpm_3_gives_exactly_3_then_429_in_the_guides_shape(gateway, upstream):
    key = _key(gateway, "rpm-three", "--rpm", "3")
    with _client(gateway, key) as client:
        answers = [client.post(CHAT, json=chat_body()) for _ in range(3)]
        refused = client.post(CHAT, json=chat_body())
    for index, answer in enumerate(answers):
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-limit-requests"] == "3"
        assert answer.headers["x-ratelimit-remaining-requests"] == str(2 - index)
        assert answer.headers["x-ratelimit-reset-requests"] == "1m0s"
        assert "x-ratelimit-limit-tokens" not in answer.headers  # no token limit set
    error = assert_error(refused, 429, "rate_limit_error")
    assert "requests per minute" in error["message"]
    retry = int(refused.headers["retry-after"])
    assert 50 <= retry <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert all(name in refused.headers for name in RATE_HEADERS)
    # The refused request never reached the upstream.
    assert len(upstream.requests) == 3


def test_streams_carry_the_headers_and_count(gateway, upstream):
    key = _key(gateway, "rpm-stream", "--rpm", "2")
    with _client(gateway, key) as client:
        first = client.post(CHAT, json=chat_body(stream=True))
        second = client.post(CHAT, json=chat_body(stream=True))
        third = client.post(CHAT, json=chat_body(stream=True))
    assert first.headers["content-type"] == "text/event-stream"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert sse_payloads(second.text)[-1] == "[DONE]"
    assert_error(third, 429, "rate_limit_error")
    assert len(upstream.requests) == 2


def test_unlimited_keys_get_no_rate_headers(gateway, api_key):
    with _client(gateway, api_key) as client:
        response = client.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert not any(name.startswith("x-ratelimit") for name in response.headers)


def test_upstream_errors_after_admission_carry_the_headers_too(gateway, upstream):
    key = _key(gateway, "rpm-errors", "--rpm", "5")
    upstream.enqueue(Reply.json(500))
    with _client(gateway, key) as client:
        response = client.post(CHAT, json=chat_body())
    assert_error(response, 502, "api_error")
    assert response.headers["x-ratelimit-remaining-requests"] == "4"


def test_grpc_gets_initial_metadata_and_resource_exhausted(gateway, upstream):
    key = _key(gateway, "rpm-grpc", "--rpm", "1")
    auth = (("authorization", f"Bearer {key}"),)
    request = chat_pb2.CreateChatCompletionRequest(
        params=chat_pb2.ChatCompletionParams(
            model="gpt-4o",
            messages=[chat_pb2.ChatMessage(role="user", content={"string_value": "Hi"})],
        )
    )
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        _, call = stub.CreateChatCompletion.with_call(request, metadata=auth, timeout=10)
        initial = dict(call.initial_metadata())
        assert initial["x-ratelimit-limit-requests"] == "1"
        assert initial["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateChatCompletion(request, metadata=auth, timeout=10)
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata())
    assert trailers["x-http-status"] == "429"
    body = json.loads(trailers["x-openai-error"])["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == 429
    assert 50 <= int(trailers["retry-after"]) <= 60
    assert trailers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.requests) == 1


def test_tpm_refuses_once_the_window_holds_the_limit(gateway, upstream):
    key = _key(gateway, "tpm", "--tpm", str(TOKENS_PER_CALL * 2))
    with _client(gateway, key) as client:
        first = client.post(CHAT, json=chat_body())
        assert first.headers["x-ratelimit-limit-tokens"] == str(TOKENS_PER_CALL * 2)
        assert first.headers["x-ratelimit-remaining-tokens"] == str(TOKENS_PER_CALL * 2)
        # Tokens are counted off the request path: allow the settle a moment.
        deadline = time.monotonic() + 5
        while (response := client.post(CHAT, json=chat_body())).status_code == 200:
            assert time.monotonic() < deadline, "the tokens were never counted"
            remaining = int(response.headers["x-ratelimit-remaining-tokens"])
            assert remaining < TOKENS_PER_CALL * 2
    error = assert_error(response, 429, "rate_limit_error")
    assert "tokens per minute" in error["message"]
    assert response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 55 <= int(response.headers["retry-after"]) <= 61


def test_max_concurrent_counts_open_streams(gateway, upstream):
    key = _key(gateway, "one-at-a-time", "--max-concurrent", "1")
    upstream.enqueue(Reply.stream([make_chunk({"content": "slow"})] * 3, delay=0.7))
    with _client(gateway, key) as client:
        with client.stream("POST", CHAT, json=chat_body(stream=True)) as slow:
            assert slow.status_code == 200
            lines = slow.iter_lines()
            next(lines)  # the stream is under way
            assert_error(client.post(CHAT, json=chat_body()), 429, "rate_limit_error")
            assert [line for line in lines if line][-1] == "data: [DONE]"
        # The slot frees when the stream ends.
        deadline = time.monotonic() + 5
        while (after := client.post(CHAT, json=chat_body())).status_code == 429:
            assert time.monotonic() < deadline, "the stream's slot was never freed"
            time.sleep(0.05)
    assert after.status_code == 200


def test_budget_per_day_refuses_without_retry(gateway, upstream):
    key = _key(
        gateway, "budget", "--budget-tokens", str(TOKENS_PER_CALL + 1), "--budget-period", "day"
    )
    with _client(gateway, key) as client:
        assert client.post(CHAT, json=chat_body()).status_code == 200
        deadline = time.monotonic() + 5
        while (response := client.post(CHAT, json=chat_body())).status_code == 200:
            assert time.monotonic() < deadline
    error = assert_error(response, 429, "rate_limit_error")
    assert "budget" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert int(response.headers["retry-after"]) <= 86_400


def test_a_dollar_budget_is_spent_to_within_one_request(gateway, upstream):
    key = _key(gateway, "a", "--budget-usd", BUDGET_USD, "--budget-period", "day")
    assert "$0.01/day" in gateway.cli("keys", "list").stdout
    before = len(upstream.requests)
    spending = spend_until_refused([gateway.url], key)
    assert len(upstream.requests) - before == spending.admitted  # the refused one never went
    # The refused request is in the ledger too (an error, costing nothing).
    cost = ledger_cost(gateway.db, "a", spending.admitted + 1)
    assert_budget_held(spending, cost, replicas=1)


def test_limits_change_on_a_live_key(gateway):
    key = _key(gateway, "live-change", "--rpm", "1")
    with _client(gateway, key) as client:
        assert client.post(CHAT, json=chat_body()).status_code == 200
        assert client.post(CHAT, json=chat_body()).status_code == 429
        gateway.cli("keys", "update", "live-change", "--rpm", "unlimited")
        deadline = time.monotonic() + 2
        while (response := client.post(CHAT, json=chat_body())).status_code == 429:
            assert time.monotonic() < deadline, "the new limit should apply within a second"
            time.sleep(0.05)
    assert response.status_code == 200
    assert "x-ratelimit-limit-requests" not in response.headers


def test_concurrent_burst_on_one_gateway_admits_exactly_n(gateway, upstream):
    key = _key(gateway, "burst", "--rpm", "7")
    statuses: list[int] = []
    lock = threading.Lock()

    def hit() -> None:
        with _client(gateway, key) as client:
            status = client.post(CHAT, json=chat_body()).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=hit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [200] * 7 + [429] * 13
    assert len(upstream.requests) == 7


# -- usage: the ledger, streams and usage injection --------------------------------------------


def test_stream_usage_is_asked_for_spliced_in_and_kept_from_the_client(gateway, upstream):
    key = _key(gateway, "stream-usage")
    raw = b'{"model": "gpt-4o", "stream": true, "seed": 18446744073709551617,\n "messages": [{"role": "user", "content": "hi"}]}'
    with _client(gateway, key) as client:
        response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(chunk["choices"] for chunk in chunks), "the usage chunk must not reach the client"
    # Every other byte is the client's own.
    sent = upstream.last_request().body
    assert sent == b'{"stream_options":{"include_usage":true},' + raw[1:]
    usage = gateway.ledger_totals("stream-usage", requests=1)
    assert usage == {
        "requests": 1,
        "prompt_tokens": PROMPT_TOKENS_PER_MESSAGE,
        "completion_tokens": COMPLETION_TOKENS,
        "errors": 0,
        "cost_micro_usd": 83,  # the upstream's own count, at gpt-4o's shipped prices
        "unpriced_requests": 0,
        "estimated_requests": 0,
    }


def test_a_client_that_asked_for_usage_gets_it_unchanged(gateway, upstream):
    key = _key(gateway, "asked-usage")
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with _client(gateway, key) as client:
        response = client.post(CHAT, json=body)
    chunks = [json.loads(p) for p in sse_payloads(response.text)[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == TOKENS_PER_CALL
    assert json.loads(upstream.last_request().body) == body


def _hidden_prompt(**extra: object) -> bytes:
    """A stream with about 10k tokens of prompt in a tool's description and a 2-character
    message: a body shaped to be counted cheaply."""
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "x" * 40_000, "parameters": {"type": "object"}},
    }
    body = chat_body(
        messages=[{"role": "user", "content": "hi"}],
        tools=[tool],
        stream=True,
        **extra,
    )
    return json.dumps(body).encode()


def _within_a_tenth(charged: int, reported: int) -> bool:
    return abs(charged - reported) <= reported / 10


def test_a_client_opting_out_of_usage_is_charged_the_upstreams_count(gateway, upstream):
    upstream.usage_from_body = True
    key = _key(gateway, "opted-out", "--budget-tokens", str(10**9), "--budget-period", "day")
    raw = _hidden_prompt(stream_options={"include_usage": False, "include_obfuscation": True})
    with _client(gateway, key) as client:
        for _ in range(20):
            response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
            assert response.status_code == 200
            payloads = sse_payloads(response.text)
            assert payloads[-1] == "[DONE]"
            # What the client asked for: no usage chunk.
            assert all(json.loads(p)["choices"] for p in payloads[:-1])
    reported = sum(
        prompt_tokens_of_body(sent.body) + COMPLETION_TOKENS for sent in upstream.requests
    )
    usage = gateway.ledger_totals("opted-out", requests=20)
    charged = usage["prompt_tokens"] + usage["completion_tokens"]
    assert _within_a_tenth(charged, reported), (charged, reported)
    # The upstream was asked for the usage; the rest of the client's bytes is untouched.
    mine = b'"stream_options": {"include_usage": false, "include_obfuscation": true}'
    asked = b'"stream_options": {"include_usage":true,"include_obfuscation":true}'
    assert all(sent.body == raw.replace(mine, asked) for sent in upstream.requests)


def test_without_the_upstreams_usage_the_whole_body_and_output_are_estimated(gateway, upstream):
    upstream.usage_from_body = True
    key = _key(gateway, "estimated-whole")
    thinking = [make_chunk({"reasoning_content": "r" * 4_000}), make_chunk({"content": "ok"})]
    upstream.enqueue(Reply.json(400, STREAM_OPTIONS_REFUSED), Reply.stream(thinking))
    raw = _hidden_prompt()
    with _client(gateway, key) as client:
        response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert sse_payloads(response.text)[-1] == "[DONE]"
    assert upstream.requests[-1].body == raw
    usage = gateway.ledger_totals("estimated-whole", requests=1)
    assert _within_a_tenth(usage["prompt_tokens"], prompt_tokens_of_body(raw)), usage
    assert usage["completion_tokens"] == 1_001  # 4,002 characters of reasoning and text


def test_upstream_refusing_stream_options_gets_the_original_bytes(gateway, upstream):
    key = _key(gateway, "no-stream-options")
    upstream.enqueue(Reply.json(400, STREAM_OPTIONS_REFUSED))
    raw = json.dumps(chat_body(stream=True)).encode()
    with _client(gateway, key) as client:
        response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert sse_payloads(response.text)[-1] == "[DONE]"
    first, second = upstream.requests
    assert b"stream_options" in first.body
    assert second.body == raw
    usage = gateway.ledger_totals("no-stream-options", requests=1)
    assert usage["errors"] == 0 and usage["completion_tokens"] == 8  # estimated


def test_a_stream_cut_short_by_the_client_counts_what_was_delivered(gateway, upstream):
    # A budget of $0.0002: the cut stream's cost alone spends it.
    key = _key(gateway, "cut-short", "--budget-usd", "0.0002", "--budget-period", "day")
    pieces = [make_chunk({"content": "x" * 40}) for _ in range(10)]
    upstream.enqueue(Reply.stream(pieces, delay=0.5))
    with (
        _client(gateway, key) as client,
        client.stream("POST", CHAT, json=chat_body(stream=True)) as response,
    ):
        lines = response.iter_lines()
        seen = 0
        while seen < 2:
            seen += next(lines).startswith("data: ")
    usage = gateway.ledger_totals("cut-short", requests=1)
    # The prompt estimate (59 characters in the body's strings and keys: 15) plus 40
    # characters (10 tokens) per chunk delivered: at least the two the client read, far fewer
    # than all ten.
    assert usage["prompt_tokens"] == 15
    assert 20 <= usage["completion_tokens"] < 100
    assert usage["errors"] == 0
    # Billed for the prompt plus the delivered text at gpt-4o's prices (2.50 and 10.00 USD per
    # 1M tokens), and marked as estimated: the upstream's usage never arrived.
    # In tenths of a micro-dollar, rounded half up: 15 x 2.5 + completion x 10.
    assert usage["cost_micro_usd"] == (15 * 25 + usage["completion_tokens"] * 100 + 5) // 10
    assert (usage["estimated_requests"], usage["unpriced_requests"]) == (1, 0)
    # The limiter counted the same cost towards the key's dollar budget.
    with _client(gateway, key) as client:
        refused = client.post(CHAT, json=chat_body())
    error = assert_error(refused, 429, "rate_limit_error")
    assert f"Spent {dollars(usage['cost_micro_usd'])}." in error["message"], error
    deadline = time.monotonic() + 5
    while not upstream.disconnects:
        assert time.monotonic() < deadline, "the upstream stream was never closed"
        time.sleep(0.05)


def test_a_dollar_budget_is_not_dodged_through_a_model_without_a_price(gateway, upstream):
    # gpt-5-model-router ships without a price: its cost is unknown, so nothing of it would
    # count towards a dollar budget.
    unpriced = "gpt-5-model-router"
    budgeted = _key(gateway, "usd-budget", "--budget-usd", "1")
    with _client(gateway, budgeted) as client:
        refused = client.post(CHAT, json=chat_body(unpriced))
        assert client.post(CHAT, json=chat_body()).status_code == 200  # gpt-4o has a price
    error = assert_error(refused, 403, "permission_error")
    assert error["param"] == "model" and "no price" in error["message"], error
    assert [json.loads(sent.body)["model"] for sent in upstream.requests] == ["gpt-4o"]
    # Counted as a refused request, as a limit's refusal is.
    assert gateway.ledger_totals("usd-budget", requests=2)["errors"] == 1
    # A key without a dollar budget (a token budget does count its tokens) may use it.
    tokens = _key(gateway, "token-budget", "--budget-tokens", "1000000")
    with _client(gateway, tokens) as client:
        assert client.post(CHAT, json=chat_body(unpriced)).status_code == 200


def test_ledger_counts_requests_tokens_and_errors_per_model(gateway, upstream):
    key = _key(gateway, "ledger")
    upstream.enqueue(Reply.json(200), Reply.json(500))
    with _client(gateway, key) as client:
        assert client.post(CHAT, json=chat_body()).status_code == 200
        assert client.post(CHAT, json=chat_body()).status_code == 502
        assert client.post(CHAT, json=chat_body("o3")).status_code == 200
    gateway.ledger_totals("ledger", requests=3)
    result = gateway.cli("keys", "usage", "ledger", "--json")
    rows = {row["model"]: row for row in json.loads(result.stdout)}
    assert rows["gpt-4o"]["requests"] == 2 and rows["gpt-4o"]["errors"] == 1
    assert rows["gpt-4o"]["prompt_tokens"] == PROMPT_TOKENS_PER_MESSAGE
    assert rows["o3"]["completion_tokens"] == COMPLETION_TOKENS
    # At the shipped prices (USD per 1M tokens, micro-dollars per token): gpt-4o 2.50 in and
    # 10.00 out, 5 x 2.5 + 7 x 10 = 82.5 -> 83; the 502 used nothing. o3 2.00 and 8.00.
    store = KeyStore(gateway.db)
    try:
        costs = {row.model: row for row in store.usage("ledger")}
    finally:
        store.close()
    assert costs["gpt-4o"].cost_micro_usd == 83
    assert costs["o3"].cost_micro_usd == 5 * 2 + 7 * 8
    assert all(row.unpriced_requests == row.estimated_requests == 0 for row in costs.values())
    table = gateway.cli("keys", "usage", "ledger", "--since", "1d").stdout
    assert "COMPLETION_TOKENS" in table.splitlines()[0] and "o3" in table


def test_nothing_is_lost_on_a_clean_shutdown(make_gateway, upstream):
    # The ledger would not be written for an hour: only the shutdown writes it.
    gateway = make_gateway(extra_env={"GATEWAY_USAGE_FLUSH_INTERVAL": "3600"}).start()
    key = gateway.wait_for_key(gateway.create_key("shutdown"))
    with _client(gateway, key) as client:
        for _ in range(3):
            assert client.post(CHAT, json=chat_body()).status_code == 200
    assert gateway.stop() == 0
    store = KeyStore(gateway.db)
    try:
        (row,) = store.usage("shutdown")
    finally:
        store.close()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (
        3,
        3 * PROMPT_TOKENS_PER_MESSAGE,
        3 * COMPLETION_TOKENS,
    )


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unreachable_redis_fails_as_configured(make_gateway, mode):
    from gateway_process import free_port

    gateway = make_gateway(
        extra_env={
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "GATEWAY_RATE_LIMIT_FAILURE_MODE": mode,
        }
    ).start()
    key = gateway.wait_for_key(gateway.create_key("no-redis", "--rpm", "1"))
    with _client(gateway, key) as client:
        responses = [client.post(CHAT, json=chat_body()) for _ in range(2)]
    if mode == "open":
        assert [r.status_code for r in responses] == [200, 200]
        assert "x-ratelimit-limit-requests" not in responses[0].headers
    else:
        for response in responses:
            assert_error(response, 503, "api_error")
            assert response.headers["retry-after"] == "1"
    assert gateway.wait_for_log("rate limiter backend unreachable")


def test_the_openai_sdk_sees_the_headers_and_a_rate_limit_error(gateway):
    from openai import OpenAI, RateLimitError

    key = _key(gateway, "sdk", "--rpm", "1")
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.parse().choices[0].message.content
    with pytest.raises(RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=messages)
    assert refused.value.status_code == 429
    assert refused.value.type == "rate_limit_error"
    assert int(refused.value.response.headers["retry-after"]) >= 1
