"""Containment on the routes beside chat (issue 16): one client's requests on speech,
transcriptions, embeddings and the Responses bridge meet an upstream that answers them with
500, hangs on them or breaks off mid-answer, while well-behaved chat clients are served. Those
clients must all be served whole, the misbehaving key's one concurrency slot must come back
after every fault, and the gateway must hold nothing in flight afterwards."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fake_upstream import Reply, make_chunk
from gateway_process import Gateway
from steady_load import Reading, SteadyLoad, assert_contained
from test_upstream_faults import metric

POISON = "a-request-this-upstream-cannot-take"
FAULTS = {
    "500": Reply.json(500, {"error": {"message": "internal error", "type": "server_error"}}),
    "hang": Reply.hang(30),
    "break mid-answer": Reply.stream_then_break([make_chunk({"content": "half an ans"})]),
}
MODELS = "gpt-4o,tts-1,whisper-1,text-embedding-3-small"

Send = Callable[[httpx.Client], httpx.Response]
ROUTES: dict[str, Send] = {
    "speech": lambda http: http.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": POISON, "voice": "alloy"}
    ),
    "transcriptions": lambda http: http.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", "prompt": POISON},
        files={"file": ("a.wav", b"RIFF-not-really-audio", "audio/wav")},
    ),
    "embeddings": lambda http: http.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": POISON}
    ),
    "responses (bridged, streamed)": lambda http: http.post(
        "/v1/responses", json={"model": "gpt-4o", "input": POISON, "stream": True}
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_on_the_other_routes_stays_with_its_client(fault, make_gateway, upstream):
    upstream.when(POISON, FAULTS[fault])
    env = {
        "GATEWAY_MODELS": MODELS,
        "GATEWAY_UPSTREAM_FIRST_BYTE_TIMEOUT": "3",
        "GATEWAY_UPSTREAM_IDLE_TIMEOUT": "3",
        # The batched stream path too: the well-behaved streams go through it.
        "GATEWAY_STREAM_FLUSH_INTERVAL": "0.02",
    }
    gateway: Gateway = make_gateway(extra_env=env).start()
    good = [gateway.wait_for_key(gateway.create_key(f"good-{n}")) for n in range(3)]
    bad = gateway.wait_for_key(gateway.create_key("bad", "--max-concurrent", "1"))
    answers: dict[str, int] = {}

    def misbehave(http: httpx.Client, round_: int) -> None:
        for route, send in ROUTES.items():
            # Admitted every time: the slot of the one before came back.
            response = send(http)
            assert response.status_code != 429, (route, response.text)
            answers[f"{route} #{round_}"] = response.status_code

    with (
        SteadyLoad(gateway, good) as load,
        httpx.Client(
            base_url=gateway.url, headers={"authorization": f"Bearer {bad}"}, timeout=60
        ) as http,
    ):
        load.wait_for(15)
        # Each route's first answers add their metric series (a route and model each, bounded
        # by the catalog): the reading starts after them.
        misbehave(http, 0)
        before = Reading.of(gateway)
        for round_ in (1, 2):
            misbehave(http, round_)
        # And the key still gets a plain chat answer.
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200, chat.text
        load.wait_for(40)
    assert_contained(
        f"{fault} on the other routes", load, before, Reading.of(gateway), f"bad got {answers}"
    )
    assert load.succeeded >= 40
    assert metric(gateway, "typegpt_gateway_inflight_requests") == 0
    assert metric(gateway, "typegpt_gateway_limiter_in_flight") == 0
