"""Conversions between the typed gRPC messages and OpenAI's JSON. Pure."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from typegpt.gateway.v1 import chat_pb2, routes_pb2

from ..errors import GatewayError, invalid_request

M = TypeVar("M", bound=Message)


# Past 2^53 a double is no longer exactly an integer (and past 2^64 JSON encoders refuse it).
_EXACT_INTEGERS = 2**53


def _integral_floats_to_int(value: Any) -> Any:
    # google.protobuf.Value holds every number as a double; OpenAI wants 5, not 5.0.
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INTEGERS:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_to_int(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(item) for item in value]
    return value


def _document(params: Message, *, proto_names: bool = True) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json_format.MessageToDict(
            params, preserving_proto_field_name=proto_names
        )
    except json_format.SerializeToJsonError as exc:
        # e.g. Infinity in a google.protobuf.Value: JSON cannot carry it.
        raise invalid_request(f"The request cannot be sent as JSON: {exc}") from exc
    return document


def request_body(
    params: chat_pb2.ChatCompletionParams, *, stream: bool, include_usage: bool = False
) -> bytes:
    """The OpenAI JSON body for typed params; `extra_body` merges into the top level."""
    document = _document(params)
    if params.HasField("seed"):
        document["seed"] = params.seed  # MessageToDict writes int64 as a string
    document.update(document.pop("extra_body", {}))
    document = _integral_floats_to_int(document)
    document["stream"] = stream
    if include_usage:
        document["stream_options"] = {"include_usage": True}
    return orjson.dumps(document)


def struct_document(params: Message) -> dict[str, Any]:
    """A google.protobuf.Struct of OpenAI parameters as the JSON object it stands for."""
    return dict(_integral_floats_to_int(_document(params, proto_names=False)))


def parse_answer(data: bytes, message: M) -> M:
    """Fills `message` from upstream JSON, ignoring fields the proto does not know."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            502, f"The upstream API's answer does not fit the typed API: {exc}", "api_error"
        ) from exc
    return _fill(document, message)


def _fill(document: Any, message: M) -> M:
    try:
        if not isinstance(document, dict):
            raise json_format.ParseError(f"expected an object, got {type(document).__name__}")
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    # Whatever an upstream sends is its fault, never the gateway's 500: ParseDict raises
    # TypeError and RecursionError too on some shapes.
    except (ValueError, TypeError, RecursionError, json_format.ParseError) as exc:
        raise GatewayError(
            502, f"The upstream API's answer does not fit the typed API: {exc}", "api_error"
        ) from exc
    return message


def embedding_body(request: routes_pb2.CreateEmbeddingRequest) -> bytes:
    """The OpenAI JSON body of a typed embeddings request, asking for base64 vectors (exact
    float32, a quarter of the size of their decimals); `extra_body` merges into the top level."""
    document = _document(request)
    document.update(document.pop("extra_body", {}))
    # Token ids come as google.protobuf.Value doubles.
    document = _integral_floats_to_int(document)
    document["encoding_format"] = "base64"
    return orjson.dumps(document)


def parse_embeddings(data: bytes) -> routes_pb2.CreateEmbeddingResponse:
    """A typed embeddings list from upstream JSON, each vector a base64 string of float32
    (little-endian, as OpenAI sends it) or, from an upstream that ignored the encoding, floats."""
    try:
        document = orjson.loads(data)
        for item in document.get("data") or () if isinstance(document, dict) else ():
            vector = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(vector, str):
                floats = array("f", base64.b64decode(vector, validate=True))
                if sys.byteorder == "big":
                    floats.byteswap()
                item["embedding"] = floats.tolist()
    except (ValueError, TypeError) as exc:
        raise GatewayError(
            502, f"The upstream API's answer does not fit the typed API: {exc}", "api_error"
        ) from exc
    return _fill(document, routes_pb2.CreateEmbeddingResponse())
