"""OpenAI's routes beside chat through the real Envoy and backend, against the fake upstream:
embeddings, legacy completions, images, speech and transcriptions, with the official `openai`
Python SDK (and raw HTTP where the bytes themselves are the point), each answer checked
against OpenAI's OpenAPI description; the typed embeddings RPC over gRPC; model routes, key
model rules, limits, budgets and the ledger on these routes.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import node_sdk
import openai
import openapi_schema
import pytest
from fake_upstream import (
    EMBEDDING_DIMENSIONS,
    SPEECH_CHUNKS,
    TRANSCRIPT,
    TRANSCRIPTION_SECONDS,
    FakeUpstream,
    Reply,
    embedding_vector,
)
from gateway_process import UPSTREAM_KEY, Gateway
from google.protobuf import struct_pb2
from openai import OpenAI
from openai_shape import chat_body

from typegpt.gateway.v1 import routes_pb2, routes_pb2_grpc

EMBEDDING_MODEL = "text-embedding-3-small"
INSTRUCT_MODEL = "gpt-3.5-turbo-instruct"
IMAGE_MODEL = "dall-e-3"
SPEECH_MODEL = "tts-1"
TRANSCRIPTION_MODEL = "whisper-1"
# Priced per token (its answer reports tokens), and a speech model without a price.
TOKENS_TRANSCRIPTION_MODEL = "gpt-4o-transcribe"
UNPRICED_SPEECH_MODEL = "gpt-4o-mini-tts"
CHAT_MODEL = "gpt-4o"
MODELS = (CHAT_MODEL, EMBEDDING_MODEL, INSTRUCT_MODEL, IMAGE_MODEL, SPEECH_MODEL)
MODELS += (TRANSCRIPTION_MODEL, TOKENS_TRANSCRIPTION_MODEL, UNPRICED_SPEECH_MODEL)
TIMEOUT = 10.0
# A few bytes that are not UTF-8, as an audio file's are.
AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\xff\xfe\x00\x80" * 8


def config_file(workdir: Path, upstream: FakeUpstream) -> Path:
    """One upstream; the embedding model limited to embeddings, the image model to images."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gateway.yaml"
    document = {
        "upstreams": [
            {"name": "fake", "base_url": upstream.base_url, "api_key_env": "TYPEGPT_API_KEY"}
        ],
        "model_routes": {EMBEDDING_MODEL: ["embeddings"], IMAGE_MODEL: ["images"]},
        # USD per 1M tokens, per image, per 1M characters spoken, per minute transcribed;
        # gpt-4o-mini-tts unpriced.
        "prices": {
            EMBEDDING_MODEL: {"input": 0.02, "output": 0},
            INSTRUCT_MODEL: {"input": 1.5, "output": 2},
            IMAGE_MODEL: {"image": 0.04},
            SPEECH_MODEL: {"characters": 15},
            TRANSCRIPTION_MODEL: {"minute": 0.006},
            TOKENS_TRANSCRIPTION_MODEL: {"input": 2.5, "output": 10},
        },
    }
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def routes_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("routes")
    env = {
        "GATEWAY_MODELS": ",".join(MODELS),
        "GATEWAY_CONFIG": str(config_file(workdir / "config", upstream)),
    }
    gw = Gateway(workdir, upstream.base_url, extra_env=env).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def key(routes_gateway: Gateway) -> str:
    return routes_gateway.create_key("routes-client")


@pytest.fixture
def client(routes_gateway: Gateway, key: str) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=routes_gateway.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT
    ) as sdk:
        yield sdk


@pytest.fixture
def schema() -> Any:
    if not openapi_schema.spec_available():
        pytest.skip(f"OpenAI OpenAPI description not found at {openapi_schema.SPEC_PATH}")
    return openapi_schema.validate


def post(gateway: Gateway, key: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return httpx.post(f"{gateway.url}/v1{path}", headers=headers, timeout=TIMEOUT, **kwargs)


# -- embeddings -----------------------------------------------------------------------------


def test_embeddings_in_floats(client: OpenAI, upstream: FakeUpstream, schema: Any) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input=["first", "second text"], encoding_format="float"
    )
    schema(raw.http_response.json(), "CreateEmbeddingResponse")
    answer = raw.parse()
    assert [item.embedding for item in answer.data] == [embedding_vector(0), embedding_vector(1)]
    assert answer.usage.prompt_tokens == 2 + 3
    sent = upstream.last_request()
    assert sent.path == "/v1/embeddings"
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.json()["input"] == ["first", "second text"]


def test_embeddings_in_base64(client: OpenAI, schema: Any) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input=[[1, 2, 3], [4, 5]], encoding_format="base64"
    )
    document = raw.http_response.json()
    for index, item in enumerate(document["data"]):
        encoded = item["embedding"]
        assert isinstance(encoded, str)
        decoded = struct.unpack(f"<{EMBEDDING_DIMENSIONS}f", base64.b64decode(encoded))
        assert list(decoded) == embedding_vector(index)
        item["embedding"] = list(decoded)
    # OpenAI's description knows only the float form: base64 is checked once decoded.
    schema(document, "CreateEmbeddingResponse")


def test_embeddings_the_sdk_default_decodes(client: OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it itself.
    answer = client.embeddings.create(model=EMBEDDING_MODEL, input="one text")
    assert answer.data[0].embedding == embedding_vector(0)


def test_embeddings_body_goes_upstream_byte_for_byte(
    routes_gateway: Gateway, key: str, upstream: FakeUpstream
) -> None:
    body = b'{"input": ["a"],  "model":"text-embedding-3-small", "dimensions": 4, "x": 1e400000}'
    body = body.replace(b"1e400000", b"123456789012345678901234567890")
    response = post(routes_gateway, key, "/embeddings", content=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 4
    assert upstream.last_request().body == body


# -- legacy completions ---------------------------------------------------------------------


def test_completion(client: OpenAI, schema: Any) -> None:
    raw = client.completions.with_raw_response.create(model=INSTRUCT_MODEL, prompt="Say hi")
    schema(raw.http_response.json(), "CreateCompletionResponse")
    answer = raw.parse()
    assert answer.object == "text_completion"
    assert answer.choices[0].text == "Hello from the fake upstream!"


def test_completion_stream(client: OpenAI, upstream: FakeUpstream, schema: Any) -> None:
    stream = client.completions.create(model=INSTRUCT_MODEL, prompt="Say hi", stream=True)
    chunks = list(stream)
    # OpenAI's description has no schema of its own for these chunks, which carry a null
    # finish_reason until the last: the last is checked as the whole answer's shape.
    schema(chunks[-1].model_dump(exclude_unset=True), "CreateCompletionResponse")
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == (
        "Hello from the fake upstream!"
    )
    # The gateway asked for the usage, and the client that did not never sees it.
    assert upstream.last_request().json()["stream_options"] == {"include_usage": True}
    assert all(chunk.usage is None for chunk in chunks)


# -- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_images(client: OpenAI, schema: Any, response_format: Any) -> None:
    raw = client.images.with_raw_response.generate(
        model=IMAGE_MODEL, prompt="a cat", n=2, response_format=response_format
    )
    schema(raw.http_response.json(), "ImagesResponse")
    images = raw.parse().data or []
    assert len(images) == 2
    if response_format == "b64_json":
        assert base64.b64decode(images[0].b64_json or "").startswith(b"\x89PNG")


def test_images_refuse_a_stream(routes_gateway: Gateway, key: str) -> None:
    body = {"model": IMAGE_MODEL, "prompt": "a cat", "stream": True}
    response = post(routes_gateway, key, "/images/generations", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"


# -- audio ----------------------------------------------------------------------------------


def test_speech(client: OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model=SPEECH_MODEL, voice="alloy", input="Hello there."
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert response.read() == b"".join(SPEECH_CHUNKS)


def test_speech_streams_as_it_comes(
    routes_gateway: Gateway, key: str, upstream: FakeUpstream
) -> None:
    """The first audio reaches the client while the upstream still holds the rest back."""
    upstream.enqueue(
        Reply.stream(
            [b"first-audio", b"rest"],
            delay=60,
            done=False,
            headers={"Content-Type": "audio/ogg"},
        )
    )
    body = {"model": SPEECH_MODEL, "voice": "alloy", "input": "Hi", "response_format": "opus"}
    headers = {"authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=TIMEOUT) as http,
        http.stream(
            "POST", f"{routes_gateway.url}/v1/audio/speech", json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/ogg"
        first = next(response.iter_raw())
        assert first == b"first-audio"
    assert upstream.wait_for_disconnect(TIMEOUT)


def test_speech_cut_off_upstream_is_an_error_of_the_call(
    routes_gateway: Gateway, key: str, upstream: FakeUpstream
) -> None:
    """Audio has no in-band error: what came reaches the client, and the request counts as
    failed (502) in the log."""
    upstream.enqueue(
        Reply.stream([b"some-audio"], done=False, headers={"Content-Type": "audio/mpeg"})
    )
    body = {"model": SPEECH_MODEL, "voice": "alloy", "input": "Hi"}
    response = post(routes_gateway, key, "/audio/speech", json=body)
    assert response.content == b"some-audio"
    pattern = r'"route":"RouteService/CreateSpeechHttp".*"status":502'
    assert routes_gateway.wait_for_log(pattern) is not None


def test_transcription(client: OpenAI, upstream: FakeUpstream, schema: Any) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model=TRANSCRIPTION_MODEL, file=("hello.wav", AUDIO, "audio/wav")
    )
    schema(raw.http_response.json(), "CreateTranscriptionResponseJson")
    assert raw.parse().text == TRANSCRIPT
    assert AUDIO in upstream.last_request().body


def test_transcription_as_text(client: OpenAI) -> None:
    text = client.audio.transcriptions.create(
        model=TRANSCRIPTION_MODEL, file=("hello.wav", AUDIO), response_format="text"
    )
    assert text.strip() == TRANSCRIPT


def test_transcription_upload_goes_upstream_byte_for_byte(
    routes_gateway: Gateway, key: str, upstream: FakeUpstream
) -> None:
    request = httpx.Request(
        "POST",
        f"{routes_gateway.url}/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key}"},
        data={"model": TRANSCRIPTION_MODEL, "language": "en"},
        files={"file": ("hello.wav", AUDIO, "audio/wav")},
    )
    body = request.read()
    with httpx.Client(timeout=TIMEOUT) as http:
        response = http.send(request)
    assert response.status_code == 200, response.text
    sent = upstream.last_request()
    assert sent.body == body
    assert sent.headers["content-type"] == request.headers["content-type"]


def test_transcription_needs_a_model_field(routes_gateway: Gateway, key: str) -> None:
    response = post(routes_gateway, key, "/audio/transcriptions", files={"file": ("a.wav", AUDIO)})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


# -- models and routes ----------------------------------------------------------------------


def test_a_model_limited_to_a_route_is_refused_on_another(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    message = caught.value.body["message"]  # type: ignore[index]
    assert EMBEDDING_MODEL in message
    assert "/v1/chat/completions" in message
    assert "/v1/embeddings" in message


def test_a_model_without_a_rule_serves_every_route(client: OpenAI) -> None:
    assert client.embeddings.create(model=CHAT_MODEL, input="x", encoding_format="float").data


def test_the_model_list_keeps_every_model(client: OpenAI) -> None:
    assert {model.id for model in client.models.list()} == set(MODELS)


def test_a_key_limited_to_gpt_4o_is_refused_an_embedding_model(routes_gateway: Gateway) -> None:
    limited = routes_gateway.create_key("only-gpt-4o", "--models", CHAT_MODEL)
    routes_gateway.wait_for_key(limited)
    response = post(
        routes_gateway, limited, "/embeddings", json={"model": EMBEDDING_MODEL, "input": "x"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    speech = {"model": SPEECH_MODEL, "voice": "alloy", "input": "x"}
    assert post(routes_gateway, limited, "/audio/speech", json=speech).status_code == 403


def test_a_request_without_a_key_is_refused_as_chat_is(routes_gateway: Gateway) -> None:
    refused = [
        httpx.post(f"{routes_gateway.url}/v1{path}", json={"model": CHAT_MODEL}, timeout=TIMEOUT)
        for path in ("/chat/completions", "/embeddings", "/audio/speech")
    ]
    assert {response.status_code for response in refused} == {401}
    assert len({response.text for response in refused}) == 1


def test_unknown_route_lists_the_routes(routes_gateway: Gateway, key: str) -> None:
    response = post(routes_gateway, key, "/images/edits", json={})
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    for path in ("/v1/embeddings", "/v1/completions", "/v1/audio/speech"):
        assert path in message


# -- the official Node SDK ------------------------------------------------------------------


def test_node_sdk(routes_gateway: Gateway, key: str) -> None:
    summary = node_sdk.run_check("routes_check.mjs", routes_gateway.url + "/v1", key)
    assert summary["embeddingsFloat"] == {
        "vectors": [embedding_vector(0), embedding_vector(1)],
        "promptTokens": 5,
    }
    assert summary["embeddingsDefault"] == [embedding_vector(0)]
    decoded = struct.unpack(
        f"<{EMBEDDING_DIMENSIONS}f", base64.b64decode(summary["embeddingsBase64"][0])
    )
    assert list(decoded) == embedding_vector(0)
    assert summary["completion"] == {
        "object": "text_completion",
        "text": "Hello from the fake upstream!",
    }
    assert summary["completionStream"] == {
        "text": "Hello from the fake upstream!",
        "finishReason": "stop",
    }
    assert summary["images"] == 2
    assert summary["speech"] == {
        "contentType": "audio/mpeg",
        "bytes": base64.b64encode(b"".join(SPEECH_CHUNKS)).decode(),
    }
    assert summary["transcription"] == TRANSCRIPT


# -- gRPC -----------------------------------------------------------------------------------


def _embeddings_answer(size: int) -> bytes:
    """An embeddings answer of at least `size` bytes (one long vector)."""
    head = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
    tail = b']}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}'
    count = (size - len(head) - len(tail)) // len(b"0.0123456789,") + 1
    return head + b",".join([b"0.0123456789"] * count) + tail


def test_a_large_answer_comes_whole_and_one_past_the_cap_is_a_502(
    make_gateway: Any, upstream: FakeUpstream
) -> None:
    cap = 8 * 1024 * 1024
    env = {
        "GATEWAY_MODELS": ",".join(MODELS),
        "GATEWAY_MAX_ANSWER_BYTES": str(cap),
        # One gRPC message holds at most this and 1 MiB: 5 MiB.
        "GATEWAY_MAX_BODY_BYTES": str(4 * 1024 * 1024),
    }
    gateway = make_gateway(extra_env=env).start()
    key = gateway.wait_for_key(gateway.create_key("large-answers"))
    # Over what one gRPC message may hold (it goes in pieces); past the cap for a whole
    # answer. (One message of it was refused as a misleading 429 rate_limit_error.)
    large, too_large = _embeddings_answer(6 * 1024 * 1024), _embeddings_answer(cap + 1)
    upstream.enqueue(Reply.json(200, large), Reply.json(200, too_large))
    body = {"model": EMBEDDING_MODEL, "input": "a"}
    whole = post(gateway, key, "/embeddings", json=body)
    assert whole.status_code == 200 and whole.content == large
    refused = post(gateway, key, "/embeddings", json=body)
    assert refused.status_code == 502, refused.text
    error = refused.json()["error"]
    assert error["type"] == "api_error" and "GATEWAY_MAX_ANSWER_BYTES" in error["message"]
    assert post(gateway, key, "/chat/completions", json=chat_body()).status_code == 200
    usage = gateway.ledger_totals("large-answers", requests=3)
    assert (usage["errors"], usage["prompt_tokens"] >= 3) == (1, True), usage


def test_typed_embeddings_over_grpc(routes_gateway: Gateway, key: str, upstream: FakeUpstream):
    request = routes_pb2.CreateEmbeddingRequest(
        model=EMBEDDING_MODEL,
        input=struct_pb2.Value(
            list_value=struct_pb2.ListValue(
                values=[struct_pb2.Value(string_value="a"), struct_pb2.Value(string_value="b")]
            )
        ),
        dimensions=4,
    )
    with grpc.insecure_channel(routes_gateway.grpc_target) as channel:
        stub = routes_pb2_grpc.RouteServiceStub(channel)
        answer = stub.CreateEmbedding(
            request, metadata=(("authorization", f"Bearer {key}"),), timeout=TIMEOUT
        )
    assert [list(item.embedding) for item in answer.data] == [
        embedding_vector(0, 4),
        embedding_vector(1, 4),
    ]
    assert answer.usage.prompt_tokens == 2
    sent = upstream.last_request().json()
    assert sent["encoding_format"] == "base64"
    assert sent["dimensions"] == 4


def test_typed_embeddings_refused_without_a_key(routes_gateway: Gateway) -> None:
    with grpc.insecure_channel(routes_gateway.grpc_target) as channel:
        stub = routes_pb2_grpc.RouteServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateEmbedding(
                routes_pb2.CreateEmbeddingRequest(model=EMBEDDING_MODEL), timeout=TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- the ledger -----------------------------------------------------------------------------


def test_the_ledger_counts_each_route(routes_gateway: Gateway, upstream: FakeUpstream) -> None:
    name = "ledger-routes"
    counted = routes_gateway.wait_for_key(routes_gateway.create_key(name))
    with OpenAI(
        base_url=routes_gateway.url + "/v1", api_key=counted, max_retries=0, timeout=TIMEOUT
    ) as sdk:
        sdk.embeddings.create(model=EMBEDDING_MODEL, input="abcdefgh", encoding_format="float")
        sdk.completions.create(model=INSTRUCT_MODEL, prompt="abcd")
        sdk.images.generate(model=IMAGE_MODEL, prompt="a cat", n=3)
        sdk.audio.speech.create(model=SPEECH_MODEL, voice="alloy", input="hi").read()
        sdk.audio.transcriptions.create(model=TRANSCRIPTION_MODEL, file=("a.wav", AUDIO))
    assert routes_gateway.wait_for_ledger({name: 5}) == {name: 5}
    rows = json.loads(routes_gateway.cli("keys", "usage", name, "--json").stdout)
    by_model = {row["model"]: row for row in rows}
    assert by_model[EMBEDDING_MODEL]["prompt_tokens"] == 2
    assert by_model[EMBEDDING_MODEL]["completion_tokens"] == 0
    assert by_model[INSTRUCT_MODEL]["prompt_tokens"] == 1
    assert by_model[INSTRUCT_MODEL]["completion_tokens"] == 7
    for model in (IMAGE_MODEL, SPEECH_MODEL, TRANSCRIPTION_MODEL):
        assert by_model[model]["requests"] == 1
        assert by_model[model]["prompt_tokens"] == by_model[model]["completion_tokens"] == 0
    # Micro-dollars: 2 tokens at $0.02/1M round to 0; 1 in and 7 out at $1.5 and $2/1M to 16;
    # 3 images at $0.04; 2 characters at $15/1M; 2.5 seconds at $0.006 a minute.
    assert by_model[EMBEDDING_MODEL]["cost_micro_usd"] == 0
    assert by_model[INSTRUCT_MODEL]["cost_micro_usd"] == 16
    assert by_model[IMAGE_MODEL]["cost_micro_usd"] == 120_000
    assert by_model[SPEECH_MODEL]["cost_micro_usd"] == 30
    assert by_model[TRANSCRIPTION_MODEL]["cost_micro_usd"] == 250
    for model in (IMAGE_MODEL, SPEECH_MODEL, TRANSCRIPTION_MODEL):
        assert by_model[model]["unpriced_requests"] == 0


def test_the_ledger_prices_audio_by_characters_seconds_or_tokens(
    routes_gateway: Gateway,
) -> None:
    """Speech costs its input's characters, a whisper-1 transcription its seconds, a
    gpt-4o-transcribe one its tokens; a speech model without a price, and a transcription
    answered as text (no usage), are unpriced, never free."""
    name = "ledger-audio"
    counted = routes_gateway.wait_for_key(routes_gateway.create_key(name))
    spoken = "Hello, world! ¿Qué tal?"  # 23 characters (not bytes: 25 in UTF-8)
    with OpenAI(
        base_url=routes_gateway.url + "/v1", api_key=counted, max_retries=0, timeout=TIMEOUT
    ) as sdk:
        sdk.audio.speech.create(model=SPEECH_MODEL, voice="alloy", input=spoken).read()
        sdk.audio.speech.create(model=UNPRICED_SPEECH_MODEL, voice="alloy", input=spoken).read()
        sdk.audio.transcriptions.create(model=TRANSCRIPTION_MODEL, file=("a.wav", AUDIO))
        sdk.audio.transcriptions.create(
            model=TRANSCRIPTION_MODEL, file=("a.wav", AUDIO), response_format="text"
        )
        sdk.audio.transcriptions.create(model=TOKENS_TRANSCRIPTION_MODEL, file=("a.wav", AUDIO))
    assert routes_gateway.wait_for_ledger({name: 5}) == {name: 5}
    rows = json.loads(routes_gateway.cli("keys", "usage", name, "--json").stdout)
    by_model = {row["model"]: row for row in rows}
    # 23 characters at $15 per 1M characters: 15 micro-dollars each.
    assert len(spoken) == 23
    assert by_model[SPEECH_MODEL]["cost_micro_usd"] == 23 * 15 == 345
    assert by_model[SPEECH_MODEL]["unpriced_requests"] == 0
    assert by_model[UNPRICED_SPEECH_MODEL]["cost_micro_usd"] == 0
    assert by_model[UNPRICED_SPEECH_MODEL]["unpriced_requests"] == 1
    # 2.5 seconds at $0.006 a minute (100 micro-dollars a second); the text answer unpriced.
    assert TRANSCRIPTION_SECONDS == 2.5
    whisper = by_model[TRANSCRIPTION_MODEL]
    assert (whisper["requests"], whisper["cost_micro_usd"], whisper["unpriced_requests"]) == (
        2,
        250,
        1,
    )
    assert whisper["prompt_tokens"] == whisper["completion_tokens"] == 0
    # 10 tokens in and 6 out at $2.5 and $10 per 1M tokens: 25 + 60.
    tokens = by_model[TOKENS_TRANSCRIPTION_MODEL]
    assert (tokens["prompt_tokens"], tokens["completion_tokens"]) == (10, 6)
    assert (tokens["cost_micro_usd"], tokens["unpriced_requests"]) == (85, 0)
    for row in rows:
        assert row["estimated_requests"] == 0, row["model"]


def test_request_limits_count_every_route(routes_gateway: Gateway) -> None:
    limited = routes_gateway.wait_for_key(routes_gateway.create_key("rpm-routes", "--rpm", "2"))
    speech = {"model": SPEECH_MODEL, "voice": "alloy", "input": "x"}
    answers = [
        post(routes_gateway, limited, "/embeddings", json={"model": EMBEDDING_MODEL, "input": "x"}),
        post(routes_gateway, limited, "/audio/speech", json=speech),
        post(
            routes_gateway, limited, "/completions", json={"model": INSTRUCT_MODEL, "prompt": "x"}
        ),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["type"] == "rate_limit_error"


def test_token_budgets_count_embeddings(routes_gateway: Gateway) -> None:
    """Each request of 8 characters is 2 input tokens: a budget of 3 admits two."""
    budgeted = routes_gateway.wait_for_key(
        routes_gateway.create_key("budget-routes", "--budget-tokens", "3", "--budget-period", "day")
    )
    body = {"model": EMBEDDING_MODEL, "input": "abcdefgh", "encoding_format": "float"}
    statuses = [post(routes_gateway, budgeted, "/embeddings", json=body).status_code for _ in "abc"]
    assert statuses == [200, 200, 429]


def test_dollar_budgets_count_images(routes_gateway: Gateway) -> None:
    """Two images at $0.04 spend a $0.05 budget: the next request is refused."""
    budgeted = routes_gateway.wait_for_key(
        routes_gateway.create_key("usd-routes", "--budget-usd", "0.05", "--budget-period", "day")
    )
    body = {"model": IMAGE_MODEL, "prompt": "a cat", "n": 2}
    statuses = [
        post(routes_gateway, budgeted, "/images/generations", json=body).status_code for _ in "ab"
    ]
    assert statuses == [200, 429]


# -- failover and redaction, as chat's ------------------------------------------------------


def test_a_failed_attempt_is_retried_on_every_route(
    routes_gateway: Gateway, key: str, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply.json(500))
    body = {"model": EMBEDDING_MODEL, "input": "x", "encoding_format": "float"}
    response = post(routes_gateway, key, "/embeddings", json=body)
    assert response.status_code == 200, response.text
    assert [request.path for request in upstream.requests] == ["/v1/embeddings"] * 2


def test_a_passed_through_text_answer_never_shows_the_upstream_key(
    routes_gateway: Gateway, key: str, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        Reply.json(200, f"echo: {UPSTREAM_KEY}", headers={"Content-Type": "text/plain"})
    )
    response = post(
        routes_gateway,
        key,
        "/audio/transcriptions",
        data={"model": TRANSCRIPTION_MODEL, "response_format": "text"},
        files={"file": ("a.wav", AUDIO)},
    )
    assert response.status_code == 200
    assert response.text.startswith("echo: ")
    assert UPSTREAM_KEY not in response.text
