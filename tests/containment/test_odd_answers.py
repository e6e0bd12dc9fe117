"""Containment of answers no upstream should send, each to one client's requests while three
well-behaved keys are served: an answer past the gateway's cap, one larger than a gRPC
message, a stream event that never ends, an error sent with HTTP 200, and a whole completion
where a stream was asked. Each gets its answer (whole, or a clear 502), the misbehaving key's
one concurrency slot comes back every time, and everyone else is served whole."""

from __future__ import annotations

import json

import httpx
from fake_upstream import Reply, make_completion
from gateway_process import Gateway
from steady_load import Reading, SteadyLoad, assert_contained
from test_upstream_faults import metric

MiB = 1024 * 1024
CAP = 8 * MiB  # GATEWAY_MAX_ANSWER_BYTES here
MESSAGE_LIMIT = 5 * MiB  # GATEWAY_MAX_BODY_BYTES (4 MiB) and 1 MiB: one gRPC message


def _embeddings(size: int) -> bytes:
    head = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
    tail = b']}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}'
    return head + b",".join([b"0.0123456789"] * (size // 13 + 1)) + tail


def _endless_event() -> Reply:
    # One event of 17 MiB without its blank line; the rest would come a minute later.
    first = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    return Reply.stream([first + b"data: " + b"x" * (17 * MiB), b"\n\n"], delay=60, done=False)


# What the misbehaving client asks, how the upstream answers it, and what the client gets.
CASES = {
    "past-the-cap": ("/v1/embeddings", False, Reply.json(200, _embeddings(CAP + 1)), 502),
    "over-one-message": ("/v1/embeddings", False, Reply.json(200, _embeddings(6 * MiB)), 200),
    "endless-event": ("/v1/chat/completions", True, _endless_event(), "error frame"),
    "error-with-200": (
        "/v1/chat/completions",
        False,
        Reply.json(200, {"error": {"message": "quota", "type": "insufficient_quota"}}),
        502,
    ),
    "whole-for-stream": ("/v1/chat/completions", True, Reply.json(200, make_completion()), 200),
}


def _ask(http: httpx.Client, case: str) -> object:
    path, stream, _, _ = CASES[case]
    model = "text-embedding-3-small" if "embeddings" in path else "gpt-4o"
    body: dict[str, object] = {"model": model}
    if "embeddings" in path:
        body["input"] = case
    else:
        body["messages"] = [{"role": "user", "content": case}]
    if stream:
        body["stream"] = True
    response = http.post(path, json=body)
    assert response.status_code != 429, (case, response.text[:200])  # the slot came back
    if not stream:
        return response.status_code
    payloads = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    if payloads and payloads[-1] == "[DONE]":
        return response.status_code
    return "error frame" if "error" in json.loads(payloads[-1]) else "cut"


def test_odd_answers_stay_with_the_client_that_asked(make_gateway, upstream):
    for case, (_, _, reply, _) in CASES.items():
        upstream.when(case, reply)
    env = {
        "GATEWAY_MODELS": "gpt-4o,text-embedding-3-small",
        "GATEWAY_MAX_ANSWER_BYTES": str(CAP),
        "GATEWAY_MAX_BODY_BYTES": str(MESSAGE_LIMIT - MiB),
    }
    gateway: Gateway = make_gateway(extra_env=env).start()
    good = [gateway.wait_for_key(gateway.create_key(f"good-{n}")) for n in range(3)]
    odd = gateway.wait_for_key(gateway.create_key("odd", "--max-concurrent", "1"))
    got: dict[str, list[object]] = {case: [] for case in CASES}
    with (
        SteadyLoad(gateway, good) as load,
        httpx.Client(
            base_url=gateway.url, headers={"authorization": f"Bearer {odd}"}, timeout=60
        ) as http,
    ):
        load.wait_for(15)
        for case in CASES:  # the first of each: its metric series, before the reading
            got[case].append(_ask(http, case))
        before = Reading.of(gateway)
        for _ in range(2):
            for case in CASES:
                got[case].append(_ask(http, case))
        load.wait_for(40)
    # Each answer is held whole at most once at a time: about 21 times its size as JSON
    # objects while it is read for its usage (see test_floods.py), plus the copies on its way.
    assert_contained(
        "odd answers", load, before, Reading.of(gateway), f"odd got {got}", max_rss_growth=24 * CAP
    )
    assert got == {case: [expected] * 3 for case, (_, _, _, expected) in CASES.items()}
    assert metric(gateway, "typegpt_gateway_inflight_requests") == 0
    assert metric(gateway, "typegpt_gateway_limiter_in_flight") == 0
