"""The pure rules of the routes beside chat: reading their requests (JSON and multipart), their
usage, renaming a model in an upload, and the catalog's model routes."""

from __future__ import annotations

import base64
import struct
from decimal import Decimal

import httpx
import pytest

from typegpt_gateway.api import proto_json
from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.pipeline import multipart
from typegpt_gateway.pipeline.catalog import Catalog
from typegpt_gateway.pipeline.routes import CHAT, EMBEDDINGS, IMAGES, ROUTES, SPEECH, TRANSCRIPTIONS
from typegpt_gateway.pipeline.usage_meter import (
    UnusableUsageError,
    embeddings_usage,
    images_usage,
    transcription_usage,
)
from typegpt_gateway.upstream.upstreams_file import ConfigError
from typegpt_gateway.usage import Usage

AUDIO = bytes(range(256)) * 4


def upload(fields: dict[str, str]) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://x/", data=fields, files={"file": ("a.wav", AUDIO, "audio/wav")}
    )
    return request.read(), request.headers["content-type"]


def test_a_form_field_is_read_from_an_upload() -> None:
    body, content_type = upload({"model": "whisper-1", "language": "en"})
    request = TRANSCRIPTIONS.parse(body, content_type)
    assert request.model == "whisper-1"
    assert request.stream is False


@pytest.mark.parametrize(
    ("fields", "content_type", "param"),
    [
        ({"language": "en"}, None, "model"),
        ({"model": ""}, None, "model"),
        ({"model": "whisper-1"}, "application/json", None),
        ({"model": "whisper-1"}, "multipart/form-data", None),
    ],
)
def test_an_upload_without_what_it_needs_is_a_400(
    fields: dict[str, str], content_type: str | None, param: str | None
) -> None:
    body, sent_type = upload(fields)
    with pytest.raises(GatewayError) as caught:
        TRANSCRIPTIONS.parse(body, content_type or sent_type)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_a_broken_upload_is_a_400() -> None:
    body, content_type = upload({"model": "whisper-1"})
    with pytest.raises(GatewayError) as caught:
        TRANSCRIPTIONS.parse(body[: body.index(b"whisper-1")], content_type)
    assert caught.value.status == 400


def test_the_model_of_an_upload_is_renamed_in_place() -> None:
    body, content_type = upload({"model": "whisper-1", "language": "en"})
    renamed = multipart.replace_model(body, "whisper-large-v3")
    assert multipart.form_field(renamed, content_type, "model") == "whisper-large-v3"
    assert renamed.replace(b"whisper-large-v3", b"whisper-1") == body


def test_an_upload_with_a_preamble_is_not_renamed() -> None:
    body, _ = upload({"model": "whisper-1"})
    assert multipart.replace_model(b"preamble\r\n" + body, "other") == b"preamble\r\n" + body


def test_json_routes_read_the_model() -> None:
    request = EMBEDDINGS.parse(b'{"model": "e", "input": ["a"]}', "application/json")
    assert (request.model, request.stream) == ("e", False)
    with pytest.raises(GatewayError) as caught:
        SPEECH.parse(b'{"input": "x"}', "")
    assert caught.value.param == "model"


def test_a_route_that_does_not_stream_refuses_stream_true() -> None:
    with pytest.raises(GatewayError) as caught:
        IMAGES.parse(b'{"model": "dall-e-3", "prompt": "x", "stream": true}', "")
    assert caught.value.param == "stream"


def test_embeddings_usage_is_the_input_tokens() -> None:
    assert embeddings_usage({"usage": {"prompt_tokens": 9, "total_tokens": 9}}) == Usage(9, 0)
    assert embeddings_usage({"data": []}) is None


def test_images_usage_counts_images_and_reported_tokens() -> None:
    assert images_usage({"data": [{}, {}]}) == Usage(images=2)
    answer = {"data": [{}], "usage": {"input_tokens": 10, "output_tokens": 20}}
    assert images_usage(answer) == Usage(10, 20, images=1)


def test_speech_usage_is_its_inputs_characters_known_before_the_call() -> None:
    body = '{"model": "tts-1", "voice": "alloy", "input": "¿Qué tal?"}'.encode()
    request = SPEECH.parse(body, "application/json")
    assert request.known_usage == Usage(characters=9)  # characters, not the 11 UTF-8 bytes
    meter = SPEECH.meter(request, strip_usage_chunk=False)
    # Its answer is audio, and even JSON from it reports nothing: the characters are its usage.
    meter.see_answer(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}')
    assert meter.usage() == Usage(characters=9)
    missing = SPEECH.parse(b'{"model": "tts-1", "input": 3}', "")
    assert missing.known_usage == Usage(characters=0)


@pytest.mark.parametrize(
    ("usage", "read"),
    [
        ({"type": "duration", "seconds": 3}, Usage(seconds=Decimal(3))),
        # As the JSON spells it, not the binary float's expansion of 2.3.
        ({"type": "duration", "seconds": 2.3}, Usage(seconds=Decimal("2.3"))),
        (
            {
                "type": "tokens",
                "input_tokens": 14,
                "output_tokens": 45,
                "total_tokens": 59,
                "input_token_details": {"audio_tokens": 14, "text_tokens": 0},
            },
            Usage(14, 45),
        ),
    ],
)
def test_transcription_usage_is_its_seconds_or_its_tokens(usage, read) -> None:
    assert transcription_usage({"text": "hi", "usage": usage}) == read


@pytest.mark.parametrize(
    "usage",
    [
        {"type": "duration", "seconds": -1},
        {"type": "duration", "seconds": True},
        {"type": "duration", "seconds": "3"},
        {"type": "duration", "seconds": 10**12},
        {"type": "duration"},
        {"type": "tokens", "input_tokens": 1},
        {"type": "minutes", "minutes": 1},
        {"seconds": 3},
        [1],
    ],
)
def test_a_transcription_usage_of_no_use_is_said_so(usage) -> None:
    with pytest.raises(UnusableUsageError):
        transcription_usage({"text": "hi", "usage": usage})


def test_a_transcription_without_usage_is_unmeasured() -> None:
    """Text, srt or vtt (or JSON without usage): a request counted, its cost unknown."""
    request = TRANSCRIPTIONS.parse(*upload({"model": "whisper-1"}))
    assert transcription_usage({"text": "hi"}) is None
    meter = TRANSCRIPTIONS.meter(request, strip_usage_chunk=False)
    meter.see_answer(b"Hello there.")
    assert meter.usage() == Usage(measured=False)
    seen = TRANSCRIPTIONS.meter(request, strip_usage_chunk=False)
    seen.see_answer(b'{"text": "hi", "usage": {"type": "duration", "seconds": 1.5}}')
    assert seen.usage() == Usage(seconds=Decimal("1.5"))


EVERYONE = KeyRecord(name="k", key_hash=b"h", prefix="sk-", created_at=0.0)


def test_a_model_limited_to_some_routes_is_refused_on_others() -> None:
    catalog = Catalog(("e", "g"), owned_by="o", created=0, routes={"e": frozenset({"embeddings"})})
    everyone = EVERYONE
    assert catalog.resolve("e", everyone, EMBEDDINGS).id == "e"
    assert catalog.resolve("g", everyone, EMBEDDINGS).id == "g"
    assert catalog.resolve("e", everyone).id == "e"  # GetModel: no route
    with pytest.raises(GatewayError) as caught:
        catalog.resolve("e", everyone, CHAT)
    assert caught.value.status == 400
    assert "'e'" in caught.value.message
    assert "/v1/chat/completions" in caught.value.message
    assert "/v1/embeddings" in caught.value.message


def test_an_unknown_route_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="embedding"):
        Catalog(("e",), owned_by="o", created=0, routes={"e": frozenset({"embedding"})})


def test_route_names_and_paths_are_unique() -> None:
    assert len({route.name for route in ROUTES}) == len(ROUTES)
    assert len({route.path for route in ROUTES}) == len(ROUTES)


def test_typed_embeddings_decode_base64_and_take_floats() -> None:
    vector = [0.5, -1.25, 3.0]
    encoded = base64.b64encode(struct.pack("<3f", *vector)).decode()
    answer = (
        b'{"object":"list","model":"e","usage":{"prompt_tokens":1,"total_tokens":1},"data":['
        + f'{{"object":"embedding","index":0,"embedding":"{encoded}"}},'.encode()
        + b'{"object":"embedding","index":1,"embedding":[1.5,2.5]}]}'
    )
    parsed = proto_json.parse_embeddings(answer)
    assert [list(item.embedding) for item in parsed.data] == [vector, [1.5, 2.5]]
    with pytest.raises(GatewayError) as caught:
        proto_json.parse_embeddings(b'{"data":[{"embedding":"not base64!"}]}')
    assert caught.value.status == 502
