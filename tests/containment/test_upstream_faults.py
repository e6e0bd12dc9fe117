"""Containment of upstream faults that one client's requests cause: the upstream answers that
client's prompt with 500, with 429 and `Retry-After: 30`, hangs on it, or breaks its stream.
Meanwhile well-behaved clients (three keys, streamed and not) must all be served, with one
upstream and with two, under the gateway's default retry and rest settings.

This is issue 11's first scenario: one client's prompt that the upstream answers 500 used to
rest the only upstream, so every other client got 503 for up to a minute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeUpstream, Reply, make_chunk
from gateway_process import Gateway
from steady_load import CHAT, Reading, SteadyLoad, assert_contained

POISON = "a-prompt-this-upstream-cannot-take"
# The misbehaving client's requests: bounded, in concurrent bursts.
BURSTS, BURST_SIZE = 4, 8

FAULTS = {
    "500": Reply.json(500, {"error": {"message": "internal error", "type": "server_error"}}),
    "429 Retry-After 30": Reply.json(429, headers={"Retry-After": "30"}),
    "hang": Reply.hang(30),
    "break mid-stream": Reply.stream_then_break([make_chunk({"content": "half an ans"})]),
}


@pytest.fixture(scope="module")
def second_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def poison_body(stream: bool) -> dict[str, object]:
    return {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": f"Please answer {POISON}."}],
        "stream": stream,
    }


def misbehave(gateway: Gateway, keys: list[str]) -> list[int]:
    """The misbehaving clients' bursts; returns the statuses they got (a broken stream's
    error frame counts as its status)."""

    def one(number: int) -> int:
        key = keys[number % len(keys)]
        stream = number % 3 == 0
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            response = http.post(
                CHAT, json=poison_body(stream), headers={"authorization": f"Bearer {key}"}
            )
        if response.status_code == 200 and stream and '"error"' in response.text:
            return 599  # the stream started, then ended with an error frame
        return response.status_code

    statuses: list[int] = []
    with ThreadPoolExecutor(BURST_SIZE) as pool:
        for burst in range(BURSTS):
            numbers = range(burst * BURST_SIZE, (burst + 1) * BURST_SIZE)
            statuses += pool.map(one, numbers)
    return statuses


def config_for(upstreams: list[FakeUpstream], path: Path) -> dict[str, str]:
    lines = ["upstreams:"]
    for number, fake in enumerate(upstreams):
        lines += [
            f"  - name: up{number}",
            f"    base_url: {fake.base_url}",
            f"    api_key: sk-upstream-{number}-secret",
        ]
    path.write_text("\n".join(lines) + "\n")
    return {"GATEWAY_CONFIG": str(path)}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("count", [1, 2], ids=["one upstream", "two upstreams"])
def test_one_clients_fault_leaves_every_other_client_served(
    fault, count, make_gateway, upstream, second_upstream, tmp_path
):
    fakes = [upstream, second_upstream][:count]
    second_upstream.reset_state()
    for fake in fakes:
        fake.when(POISON, FAULTS[fault])
    env = {"GATEWAY_UPSTREAM_FIRST_BYTE_TIMEOUT": "3", "GATEWAY_UPSTREAM_IDLE_TIMEOUT": "3"}
    if count > 1:
        env |= config_for(fakes, tmp_path / "gateway.yaml")
    gateway = make_gateway(extra_env=env).start()
    good = [gateway.create_key(f"good-{number}") for number in range(3)]
    # With two upstreams, two misbehaving keys: enough clients to rest both upstreams.
    bad = [gateway.create_key(f"bad-{number}") for number in range(count)]
    for key in good + bad:
        gateway.wait_for_key(key)

    with SteadyLoad(gateway, good) as load:
        load.wait_for(20)
        before = Reading.of(gateway)
        statuses = misbehave(gateway, bad)
        load.wait_for(60)
    after = Reading.of(gateway)

    assert_contained(
        f"{fault}, {count} upstream(s)",
        load,
        before,
        after,
        f"misbehaving client got {dict(Counter(statuses))}",
    )
    assert load.succeeded >= 80
    assert 200 not in statuses and len(statuses) == BURSTS * BURST_SIZE
    if fault == "500":
        # The upstream's failure, passed on as such: never a 503 for a rested upstream.
        assert set(statuses) == {502}, statuses


MALFORMED = "an-answer-of-an-unexpected-shape"
MALFORMED_FAULTS = [
    # Usage and tool calls of shapes no parser expects; the answer itself still reaches the
    # client as the upstream sent it.
    Reply.json(
        200,
        {
            "id": "chatcmpl-odd",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": 5}}],
            "usage": {"prompt_tokens": "many", "completion_tokens": [1]},
        },
    ),
    Reply.stream(
        [
            make_chunk({"role": "assistant", "tool_calls": 5}),
            make_chunk({"content": None, "tool_calls": [7, {"function": 3}]}),
            {"id": "x", "choices": [], "usage": "lots"},
            {"id": "x", "choices": {"0": "not a list"}, "usage": {"prompt_tokens": -1}},
        ]
    ),
]


def metric(gateway: Gateway, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_malformed_usage_is_counted_and_releases_every_slot(make_gateway, upstream):
    gateway = make_gateway().start()
    good = [gateway.wait_for_key(gateway.create_key(f"good-{n}")) for n in range(2)]
    odd = gateway.wait_for_key(gateway.create_key("odd", "--max-concurrent", "1"))
    rounds = 10
    with SteadyLoad(gateway, good) as load:
        load.wait_for(10)
        before = Reading.of(gateway)
        for number in range(rounds):
            stream = number % 2 == 1
            upstream.when(MALFORMED, MALFORMED_FAULTS[number % 2])
            body = {**poison_body(stream), "messages": [{"role": "user", "content": MALFORMED}]}
            response = httpx.post(
                f"{gateway.url}{CHAT}",
                json=body,
                headers={"authorization": f"Bearer {odd}"},
                timeout=30,
            )
            # Admitted each time: the one slot of the key was released by the one before.
            assert response.status_code == 200, response.text
            upstream.reset_rules()
        load.wait_for(10)
    assert_contained("malformed usage and tool calls", load, before, Reading.of(gateway))
    assert gateway.wait_for_ledger({"odd": rounds}) == {"odd": rounds}
    assert metric(gateway, "typegpt_gateway_inflight_requests") == 0
    assert metric(gateway, "typegpt_gateway_limiter_in_flight") == 0
