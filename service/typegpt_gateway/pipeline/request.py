"""A request as the gateway reads it: strict JSON, no repeated keys, the few fields the
gateway acts on (model, stream, stream_options), and the prompt's token estimate. Pure rules;
the body itself goes upstream as the client sent it. `parse_chat_request` is chat's reading;
other routes read their bodies with the same pieces (`read_json_object`, `read_model`,
`read_stream`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import invalid_request
from ..usage import Usage
from .multipart import MULTIPART_TYPE, form_field
from .usage_meter import estimate_prompt_tokens


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What the gateway acts on in a request of any route."""

    model: str
    stream: bool
    # What the client asked of stream_options: None when it sent none.
    include_usage: bool | None = None
    # The prompt's estimate, for when the upstream's usage never comes.
    prompt_tokens: int = 0
    # What the request itself tells of its usage, before the call (speech: the characters of
    # its input); None when only the answer tells.
    known_usage: Usage | None = None


# Chat's name for it, which its tests know.
ChatRequest = ApiRequest


JSON_TYPE = "application/json"


class _Repeated(dict[str, object]):
    """An object in which `key` came more than once."""

    key: str


def _path_to_repeat(document: object) -> str:
    """Where the outermost object that repeats a key is, as a `param` (`messages[0].role`)."""
    pending: list[tuple[str, object]] = [("", document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _Repeated):
            return f"{path}.{value.key}" if path else value.key
        if isinstance(value, dict):
            members = ((f"{path}.{key}" if path else key, v) for key, v in value.items())
        elif isinstance(value, list):
            members = ((f"{path}[{index}]", v) for index, v in enumerate(value))
        else:
            continue
        pending.extend(reversed(list(members)))
    raise AssertionError("unreachable: a repeat was marked")


def _marked(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object, marked (_Repeated) when it gives a key twice."""
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    marked = _Repeated(found)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    return marked


def _refuse_repeated_keys(body: bytes) -> None:
    """orjson keeps a repeated key's last value, an upstream may keep its first: the gateway
    would check (and estimate) one request and forward another. So a key given twice in any
    object is refused. orjson cannot tell, so the standard library parses the body again
    with a hook per object (not per byte): measured, 80-100 us more per 64 KiB prompt and
    about 40 ms per 32 MiB body. Screening the body for repeats without parsing it (counting
    each key's spelling, looking for escapes) cost more than that. The hook keeps no object:
    a second document of the body would double the memory a large body costs (one of
    500,000 small objects makes a document of 140 MB)."""
    repeated = False

    def check(pairs: list[tuple[str, object]]) -> None:
        nonlocal repeated
        if not repeated and len({key for key, _ in pairs}) != len(pairs):
            repeated = True

    try:
        json.loads(body, object_pairs_hook=check)
    except RecursionError:
        raise invalid_request("The JSON body of your request is nested too deeply.") from None
    if repeated:
        # Only now is a document built whose objects say where the repeat is.
        param = _path_to_repeat(json.loads(body, object_pairs_hook=_marked))
        if len(param) > 100:
            param = param[:100] + "..."
        raise invalid_request(
            f"Duplicate key '{param}' in the JSON body: each key may appear only once.", param
        )


def media_type(content_type: str) -> str:
    """`multipart/form-data` of `multipart/form-data; boundary=x`, lower-cased."""
    return content_type.partition(";")[0].strip().lower()


def read_json_object(
    body: bytes, content_type: str, what: str = "a chat completion request"
) -> dict[str, Any]:
    """The body as a JSON object, or the 400 the client gets; `what` names the request in
    the message. `content_type` is the client's Content-Type header ("" when it sent none)."""
    # OpenAI reads a body as its Content-Type says (a form-encoded one has no `model` to
    # it): a body labelled anything else than JSON is refused, not read as JSON here and
    # perhaps otherwise upstream. A charset parameter changes nothing: JSON is UTF-8.
    if media_type(content_type) not in ("", JSON_TYPE):
        raise invalid_request(
            f"Invalid Content-Type header: the body of {what} must be JSON, "
            f"sent with Content-Type: {JSON_TYPE}."
        )
    try:
        # Strict RFC 8259 JSON, as the upstream may read it: UTF-8 without a BOM, no NaN or
        # Infinity, numbers within a double's range, no lone surrogates.
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(
            f"We could not parse the JSON body of your request ({exc}). The body must be "
            f"valid JSON in UTF-8 (Content-Type: {JSON_TYPE})."
        ) from None
    if not isinstance(document, dict):
        raise invalid_request("The request body must be a JSON object.")
    _refuse_repeated_keys(body)
    return document


def read_model(model: object) -> str:
    """The `model` a request names (its JSON member or its form field), or the 400."""
    if model is None:
        raise invalid_request("You must provide a model parameter.", "model")
    if not isinstance(model, str) or not model:
        raise invalid_request("Invalid type for 'model': expected a non-empty string.", "model")
    return model


def read_stream(document: dict[str, Any]) -> bool:
    stream = document.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request("Invalid type for 'stream': expected a boolean.", "stream")
    return bool(stream)


def read_include_usage(document: dict[str, Any]) -> bool | None:
    """What the client asked of stream_options: None when it sent none."""
    if "stream_options" not in document:
        return None
    options = document["stream_options"]
    return isinstance(options, dict) and options.get("include_usage") is True


def parse_chat_request(body: bytes, content_type: str = JSON_TYPE) -> ChatRequest:
    """The fields the gateway needs, or the 400 the client gets. The body itself is not changed.

    `content_type` is the client's Content-Type header ("" when it sent none)."""
    document = read_json_object(body, content_type)
    model = read_model(document.get("model"))
    messages = document.get("messages")
    if messages is None:
        raise invalid_request("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list):
        raise invalid_request(
            "Invalid type for 'messages': expected an array of objects.", "messages"
        )
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(
                f"Invalid type for 'messages[{index}]': expected an object.", f"messages[{index}]"
            )
        if not isinstance(message.get("role"), str):
            raise invalid_request(
                f"Missing required parameter: 'messages[{index}].role'.",
                f"messages[{index}].role",
            )
    return ChatRequest(
        model=model,
        stream=read_stream(document),
        include_usage=read_include_usage(document),
        prompt_tokens=estimate_prompt_tokens(document),
    )


RequestParser = Callable[[bytes, str], ApiRequest]


def json_request_parser(
    what: str, *, streams: bool, measure: Callable[[dict[str, Any]], Usage] | None = None
) -> RequestParser:
    """The reading of a route whose body is a JSON object naming its model (`what` names the
    request in messages: "an embeddings request"); a route that does not `streams` refuses
    `"stream": true` rather than forward a stream it would read as one JSON answer. `measure`
    reads the usage a request tells of itself (speech's characters)."""

    def parse(body: bytes, content_type: str) -> ApiRequest:
        document = read_json_object(body, content_type, what)
        model = read_model(document.get("model"))
        stream = read_stream(document)
        if stream and not streams:
            raise invalid_request(
                f"Streaming is not supported for {what} on this gateway: "
                "'stream' must be false or absent.",
                "stream",
            )
        return ApiRequest(
            model=model,
            stream=stream,
            include_usage=read_include_usage(document) if stream else None,
            prompt_tokens=estimate_prompt_tokens(document),
            known_usage=measure(document) if measure is not None else None,
        )

    return parse


def form_request_parser(what: str) -> RequestParser:
    """The reading of a route whose body is a multipart upload with a `model` form field."""

    def parse(body: bytes, content_type: str) -> ApiRequest:
        if media_type(content_type) != MULTIPART_TYPE:
            raise invalid_request(
                f"Invalid Content-Type header: the body of {what} must be "
                f"{MULTIPART_TYPE}, with its boundary."
            )
        return ApiRequest(model=read_model(form_field(body, content_type, "model")), stream=False)

    return parse
