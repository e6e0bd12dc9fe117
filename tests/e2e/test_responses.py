"""`POST /v1/responses` through the real Envoy and backend, with the official openai SDK, in
both modes: bridged (the default for the environment's upstream: the fake's chat completions)
and native (an upstream marked `responses: native`: the fake's own Responses API)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import node_sdk
import openai
import openapi_schema
import pytest
from fake_upstream import (
    COMPLETION_TOKENS,
    DEFAULT_CONTENT,
    DEFAULT_TOOL_ARGUMENTS,
    DEFAULT_TOOL_CALL_ID,
    PROMPT_TOKENS_PER_MESSAGE,
    STREAM_OPTIONS_REFUSED,
    FakeUpstream,
    Reply,
    make_chunk,
    make_response,
    make_response_events,
)
from gateway_process import SCRIPTED_FAILURES, UPSTREAM_KEY, Gateway
from google.protobuf import json_format, struct_pb2
from openai import OpenAI

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

MODEL = "gpt-4o"
TIMEOUT = 10.0
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
    "strict": False,
}


@pytest.fixture(scope="module")
def native_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("native")
    config = workdir / "gateway.yaml"
    config.write_text(
        "upstreams:\n"
        f"  - {{name: openai, base_url: '{upstream.base_url}', api_key_env: TYPEGPT_API_KEY,"
        " responses: native}\n"
    )
    gateway = Gateway(
        workdir, upstream.base_url, extra_env={**SCRIPTED_FAILURES, "GATEWAY_CONFIG": str(config)}
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def native_key(native_gateway: Gateway) -> str:
    return native_gateway.wait_for_key(native_gateway.create_key("native-client"))


@pytest.fixture(params=["bridged", "native"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(
    mode: str, request: pytest.FixtureRequest, gateway: Gateway, api_key: str
) -> tuple[Gateway, str]:
    if mode == "native":
        return request.getfixturevalue("native_gateway"), request.getfixturevalue("native_key")
    return gateway, gateway.wait_for_key(api_key)


@pytest.fixture
def client(served: tuple[Gateway, str]) -> Iterator[OpenAI]:
    gateway, key = served
    with OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT) as sdk:
        yield sdk


def validate(instance: Any, name: str) -> None:
    if openapi_schema.spec_available():
        openapi_schema.validate(instance, name)


def upstream_path(upstream: FakeUpstream) -> str:
    return upstream.last_request().path


def sent_to(mode: str) -> str:
    return "/v1/responses" if mode == "native" else "/v1/chat/completions"


def test_create(client: OpenAI, upstream: FakeUpstream, mode: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, instructions="Be brief.", input="Hello, how are you?"
    )
    validate(json.loads(raw.text), "Response")
    response = raw.parse()
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == DEFAULT_CONTENT
    assert response.usage is not None
    # The system message and the user's: the fake counts 5 tokens a message or input item.
    assert response.usage.input_tokens == 2 * PROMPT_TOKENS_PER_MESSAGE
    assert response.usage.output_tokens == COMPLETION_TOKENS
    assert response.usage.total_tokens == 2 * PROMPT_TOKENS_PER_MESSAGE + COMPLETION_TOKENS
    sent = upstream.last_request()
    assert sent.path == sent_to(mode)
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    if mode == "bridged":
        assert sent.json() == {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello, how are you?"},
            ],
        }
    else:
        assert sent.json() == {
            "model": MODEL,
            "instructions": "Be brief.",
            "input": "Hello, how are you?",
        }


def test_stream_with_the_sdks_helper(client: OpenAI, upstream: FakeUpstream, mode: str) -> None:
    with client.responses.stream(model=MODEL, input="Hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == DEFAULT_CONTENT
    assert final.output_text == DEFAULT_CONTENT
    assert final.usage is not None and final.usage.output_tokens == COMPLETION_TOKENS
    assert upstream_path(upstream) == sent_to(mode)


def test_stream_events_on_the_wire(served: tuple[Gateway, str], mode: str) -> None:
    gateway, key = served
    body = {"model": MODEL, "input": "Hello", "stream": True, "tools": [WEATHER]}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if not line.startswith(":")]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    events = [
        json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")
    ]
    assert names == [event["type"] for event in events]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in names
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == json.loads(DEFAULT_TOOL_ARGUMENTS)
    for event in events:
        validate(event, _event_schema(event["type"]))


def _event_schema(kind: str) -> str:
    schemas = openapi_schema.components()
    for branch in schemas["ResponseStreamEvent"]["anyOf"]:
        name = branch["$ref"].rsplit("/", 1)[-1]
        if schemas[name]["properties"]["type"]["enum"] == [kind]:
            return str(name)
    raise AssertionError(f"no event {kind!r} in OpenAI's description")


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(client: OpenAI, upstream: FakeUpstream, stream: bool) -> None:
    question: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        with client.responses.stream(model=MODEL, input=question, tools=[WEATHER]) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(model=MODEL, input=question, tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert call.call_id == DEFAULT_TOOL_CALL_ID
    assert json.loads(call.arguments) == {"location": "Paris"}
    history = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]
    if stream:
        with client.responses.stream(model=MODEL, input=history, tools=[WEATHER]) as events:
            answer = events.get_final_response()
    else:
        answer = client.responses.create(model=MODEL, input=history, tools=[WEATHER])
    assert answer.output_text == DEFAULT_CONTENT
    sent = upstream.last_request().json()
    if "messages" in sent:  # bridged: the call and its result as chat messages
        assert sent["messages"][-2]["tool_calls"][0]["id"] == DEFAULT_TOOL_CALL_ID
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": DEFAULT_TOOL_CALL_ID,
            "content": "Sunny, 21 C",
        }
    else:
        assert sent["input"][-1]["type"] == "function_call_output"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
    ],
)
def test_the_bridge_refuses_what_it_cannot_honour(
    gateway: Gateway, api_key: str, upstream: FakeUpstream, extra: dict[str, Any], param: str
) -> None:
    sdk = OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)
    with sdk, pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input="Hi", **extra)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"]
    assert upstream.requests == []


def test_keys_and_model_rules_apply(gateway: Gateway, upstream: FakeUpstream) -> None:
    url = f"{gateway.url}/v1/responses"
    body = {"model": "gpt-4o-mini", "input": "Hi", "tools": [{"type": "web_search"}]}
    # No key: 401, before the body is looked at.
    assert httpx.post(url, json=body, timeout=TIMEOUT).status_code == 401
    limited = gateway.wait_for_key(gateway.create_key("responses-limited", "--models", "gpt-4o"))
    refused = httpx.post(
        url,
        json={"model": "gpt-4.1", "input": "Hi"},
        headers={"authorization": f"Bearer {limited}"},
        timeout=TIMEOUT,
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == 403
    assert upstream.requests == []


def test_the_ledger_counts_responses_and_their_cost(served: tuple[Gateway, str], mode: str) -> None:
    gateway, _ = served
    name = f"responses-ledger-{mode}"
    key = gateway.wait_for_key(gateway.create_key(name))
    with OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        sdk.responses.create(model=MODEL, input="Hi")
        with sdk.responses.stream(model=MODEL, input="Hi") as stream:
            stream.get_final_response()
    assert gateway.wait_for_ledger({name: 2}) == {name: 2}
    [row] = json.loads(gateway.cli("keys", "usage", name, "--json").stdout)
    assert row["prompt_tokens"] == 2 * PROMPT_TOKENS_PER_MESSAGE
    assert row["completion_tokens"] == 2 * COMPLETION_TOKENS
    assert row["errors"] == 0
    # gpt-4o's shipped price, $2.50 and $10 per 1M tokens: 5 x 2.5 + 7 x 10 = 82.5, so 83
    # micro-dollars a request (rounded once per request, halves up).
    assert row["cost_micro_usd"] == 2 * 83


def test_the_bridge_streams_from_an_upstream_that_refuses_stream_options(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    # The gateway asks for the stream's usage; an upstream without the option refuses it, and
    # gets the bridged request again without it: the client still gets its whole stream.
    name = "responses-no-stream-options"
    key = gateway.wait_for_key(gateway.create_key(name))
    upstream.enqueue(Reply.json(400, STREAM_OPTIONS_REFUSED))
    with (
        OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT) as sdk,
        sdk.responses.stream(model=MODEL, input="Hello") as stream,
    ):
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == DEFAULT_CONTENT
    asked, plain = (json.loads(request.body) for request in upstream.requests[-2:])
    assert asked["stream_options"] == {"include_usage": True} and "stream_options" not in plain
    assert {**plain, "stream_options": asked["stream_options"]} == asked
    # No usage came: the ledger has the estimate, and says so.
    usage = gateway.ledger_totals(name, requests=1)
    assert (usage["estimated_requests"], usage["errors"]) == (1, 0), usage
    assert usage["completion_tokens"] > 0, usage


def test_a_bridged_stream_past_the_answer_cap_fails_and_a_chat_stream_has_none(
    make_gateway: Any, upstream: FakeUpstream
) -> None:
    # The bridge holds a whole response for its last event; a chat stream holds nothing.
    gateway = make_gateway(extra_env={"GATEWAY_MAX_ANSWER_BYTES": str(1024 * 1024)}).start()
    key = gateway.wait_for_key(gateway.create_key("long-streams"))
    pieces = [make_chunk({"content": "x" * 4096}) for _ in range(400)]  # 1.6 MiB of text
    upstream.enqueue(Reply.stream(pieces), Reply.stream(pieces))
    headers = {"authorization": f"Bearer {key}"}
    bridged = httpx.post(
        f"{gateway.url}/v1/responses",
        json={"model": MODEL, "input": "Hi", "stream": True},
        headers=headers,
        timeout=TIMEOUT,
    )
    last = json.loads(bridged.text.rstrip().rsplit("data: ", 1)[-1])
    assert last["type"] == "response.failed", last["type"]
    assert "GATEWAY_MAX_ANSWER_BYTES" in last["response"]["error"]["message"]
    chat = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        headers=headers,
        timeout=TIMEOUT,
    )
    assert chat.text.rstrip().endswith("data: [DONE]") and chat.text.count("x" * 4096) == 400


def test_a_bridged_stream_with_a_chunk_not_json_fails_as_the_upstreams_fault(
    gateway: Gateway, api_key: str, upstream: FakeUpstream
) -> None:
    first = make_chunk({"content": "Hel"})
    upstream.enqueue(Reply.stream([first, b"data: {not json\n\n", make_chunk({"content": "lo"})]))
    logged = len(gateway.log())
    response = httpx.post(
        f"{gateway.url}/v1/responses",
        json={"model": MODEL, "input": "Hi", "stream": True},
        headers={"authorization": f"Bearer {gateway.wait_for_key(api_key)}"},
        timeout=TIMEOUT,
    )
    last = json.loads(response.text.rstrip().rsplit("data: ", 1)[-1])
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["message"] == (
        "The upstream API sent a stream chunk that is not JSON."
    )
    # The text before it is in the failed response; the gateway logged no error of its own.
    assert last["response"]["output"][0]["content"][0]["text"] == "Hel"
    assert "unexpected error" not in gateway.log()[logged:]


def test_a_broken_stream_ends_with_an_error_event(
    served: tuple[Gateway, str], mode: str, upstream: FakeUpstream
) -> None:
    gateway, key = served
    if mode == "native":
        first: dict[str, Any] = {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
            "logprobs": [],
            "sequence_number": 0,
        }
    else:
        first = make_chunk({"content": "Hel"}, include_usage=True)
    upstream.enqueue(Reply.stream_then_break([first]))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={"model": MODEL, "input": "Hi", "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    ) as response:
        lines = [line for line in response.iter_lines() if not line.startswith(":")]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    events = [
        json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")
    ]
    assert names == [event["type"] for event in events]
    assert "response.output_text.delta" in names
    error = events[names.index("error")]
    assert error["code"] == "502" and "upstream" in error["message"].lower()
    if mode == "bridged":
        assert names[-1] == "response.failed"
        assert events[-1]["response"]["output"][0]["status"] == "incomplete"
    for event in events:
        validate(event, _event_schema(event["type"]))


def test_create_response_over_grpc(served: tuple[Gateway, str], mode: str) -> None:
    gateway, key = served
    params = struct_pb2.Struct()
    json_format.ParseDict({"model": MODEL, "input": "Hello", "tools": [WEATHER]}, params)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        called = stub.CreateResponse(
            chat_pb2.CreateResponseRequest(params=params),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=TIMEOUT,
        )
        json_format.ParseDict({"model": MODEL, "input": "Hello"}, params)
        texted = stub.CreateResponse(
            chat_pb2.CreateResponseRequest(params=params),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=TIMEOUT,
        )
        with pytest.raises(grpc.RpcError) as refused:
            json_format.ParseDict({"model": MODEL, "input": "Hi", "stream": True}, params)
            stub.CreateResponse(
                chat_pb2.CreateResponseRequest(params=params),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=TIMEOUT,
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    whole = json_format.MessageToDict(called.response)
    validate(whole, "Response")
    assert called.status == "completed"
    assert whole["output"][0]["type"] == "function_call"
    assert texted.output_text == DEFAULT_CONTENT
    assert texted.usage.output_tokens == COMPLETION_TOKENS
    assert texted.usage.total_tokens == texted.usage.input_tokens + COMPLETION_TOKENS


def test_native_forwards_the_clients_bytes(
    native_gateway: Gateway, native_key: str, upstream: FakeUpstream
) -> None:
    # An unknown parameter, an integer past 2^53 and odd spacing all reach the upstream as sent.
    body = b'{"model": "gpt-4o",  "input":"Hi","future_param":{"n":1152921504606846977}}'
    answered = httpx.post(
        f"{native_gateway.url}/v1/responses",
        content=body,
        headers={"authorization": f"Bearer {native_key}", "content-type": "application/json"},
        timeout=TIMEOUT,
    )
    assert answered.status_code == 200, answered.text
    assert upstream.last_request().body == body


def test_node_sdk(served: tuple[Gateway, str], upstream: FakeUpstream) -> None:
    gateway, key = served
    summary = node_sdk.run_check("responses_check.mjs", gateway.url + "/v1", key)
    usage = {
        "input_tokens": 2 * PROMPT_TOKENS_PER_MESSAGE,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": COMPLETION_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 2 * PROMPT_TOKENS_PER_MESSAGE + COMPLETION_TOKENS,
    }
    assert summary["create"] == {
        "object": "response",
        "status": "completed",
        "text": DEFAULT_CONTENT,
        "usage": usage,
    }
    stream = summary["stream"]
    assert (stream["first"], stream["last"]) == ("response.created", "response.completed")
    assert stream["text"] == DEFAULT_CONTENT
    assert stream["usage"]["output_tokens"] == COMPLETION_TOKENS
    assert summary["tools"] == {
        "name": "get_weather",
        "callId": DEFAULT_TOOL_CALL_ID,
        "arguments": {"location": "Paris"},
        "text": DEFAULT_CONTENT,
    }


def test_a_stream_its_client_leaves_is_cancelled_and_billed_for_what_it_got(
    served: tuple[Gateway, str], mode: str, upstream: FakeUpstream
) -> None:
    gateway, _ = served
    name = f"cut-short-{mode}"
    key = gateway.wait_for_key(gateway.create_key(name))
    text = "x" * 40  # 10 tokens at the estimate's 4 characters each
    if mode == "native":
        created = make_response_events(make_response({"model": MODEL}))[0]
        delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0}
        events: list[Any] = [created, *[{**delta, "content_index": 0, "delta": text}] * 10]
    else:
        events = [make_chunk({"content": text}) for _ in range(10)]
    upstream.enqueue(Reply.stream(events, delay=0.5))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={"model": MODEL, "input": "Hi", "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    ) as response:
        delivered = 0
        for line in response.iter_lines():
            delivered += line.startswith("data: ") and "response.output_text.delta" in line
            if delivered == 2:
                break
    assert upstream.wait_for_disconnect(5.0)
    # No usage ever came: the prompt's estimate, and the output of at least the two deltas
    # read, far fewer than all ten.
    usage = gateway.ledger_totals(name, requests=1)
    assert 20 <= usage["completion_tokens"] < 100, usage
    assert (usage["estimated_requests"], usage["errors"]) == (1, 0), usage
    assert usage["prompt_tokens"] > 0 and usage["cost_micro_usd"] > 0, usage


def _log_line(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The one request log line of `request_id` (written as the RPC ends: waited for)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            record
            for record in map(json.loads, filter(None, gateway.log().splitlines()))
            if isinstance(record, dict)
            and record.get("logger") == "typegpt_gateway.requests"
            and record.get("request_id") == request_id
        ]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)


def test_one_log_line_per_request_with_its_key_and_model(gateway: Gateway, api_key: str) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    url = f"{gateway.url}/v1/responses"
    for request_id, body in (
        ("responses-ok-1", {"model": MODEL, "input": "Hi"}),
        ("responses-refused-1", {"model": MODEL, "input": "Hi", "background": True}),
    ):
        httpx.post(url, json=body, headers={**headers, "x-request-id": request_id}, timeout=TIMEOUT)
    served, refused = (
        _log_line(gateway, "responses-ok-1"),
        _log_line(gateway, "responses-refused-1"),
    )
    assert (served["status"], served["key"], served["model"]) == (200, "test-client", MODEL)
    assert served["route"] == "ChatService/CreateResponseHttp"
    assert (refused["status"], refused["key"], refused["model"]) == (400, "test-client", MODEL)


def test_a_failed_attempt_is_retried(make_gateway: Any, upstream: FakeUpstream) -> None:
    gateway = make_gateway(
        extra_env={"GATEWAY_UPSTREAM_RETRY_BACKOFF": "0.01", "GATEWAY_UPSTREAM_COOLDOWN_AFTER": "0"}
    ).start()
    key = gateway.wait_for_key(gateway.create_key("responses-retried"))
    upstream.enqueue(Reply.json(503))
    with OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        assert sdk.responses.create(model=MODEL, input="Hi").output_text == DEFAULT_CONTENT
    assert [request.path for request in upstream.requests] == ["/v1/chat/completions"] * 2
