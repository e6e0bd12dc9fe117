"""The Responses API's RPCs (`POST /v1/responses` and the typed CreateResponse), served by the
chat service. A request goes natively to upstreams that have the Responses API, or through the
bridge (responses/) as a chat completion; either way through the one pipeline, as the route
`responses`, with the chat route's keys, rules, limits, budgets and failover."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from google.protobuf import json_format, struct_pb2

from typegpt.gateway.v1 import chat_pb2

from ..errors import GatewayError, invalid_request
from ..ops import observe
from ..pipeline.answer import Passthrough, Stream
from ..pipeline.pipeline import Pipeline
from ..pipeline.request import JSON_TYPE
from ..pipeline.responses_request import FINAL_EVENTS, read_responses_request
from ..pipeline.routes import RESPONSES, OpenAIRoute
from ..pipeline.sse import DONE, KEEPALIVE_FRAME
from ..responses.bridge_request import to_chat_request
from ..responses.bridge_route import BRIDGED
from ..responses.bridge_stream import EventStream, event_frame
from ..responses.response_object import ResponseShape, as_object, from_completion
from ..upstream.client import EVENT_STREAM
from ..upstream.upstreams_file import UpstreamSpec, responses_mode
from . import http_route, proto_json
from .rpc import abort, as_gateway_error, authorization_of


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A Responses request ready for the pipeline: the route and the body it sends, and for
    the bridge the Response its answer becomes."""

    route: OpenAIRoute
    body: bytes
    content_type: str
    shape: ResponseShape | None


def _prepare_body(
    body: bytes, content_type: str, specs: tuple[UpstreamSpec, ...]
) -> tuple[str, _Prepared | GatewayError]:
    """The request's model, and the request ready for the pipeline, or the bridge's 400. One
    piece of work, so that a large body's document is gone once it is bridged."""
    document = read_responses_request(body, content_type)
    model: str = document["model"]
    if responses_mode(specs, model) == "native":
        return model, _Prepared(RESPONSES, body, content_type, None)
    try:
        chat = orjson.dumps(to_chat_request(document))
        return model, _Prepared(BRIDGED, chat, JSON_TYPE, ResponseShape.of(document))
    except GatewayError as refused:
        return model, refused


class ResponsesRpcs:
    """ChatService's Responses API RPCs (a part of ChatServicer)."""

    _pipeline: Pipeline
    _log_bodies: bool

    async def _prepare(self, body: bytes, content_type: str, context: observe.Context) -> _Prepared:
        # The key first, as on every route: a client without one learns nothing of the body.
        exchange = observe.current()
        key = await self._pipeline.authenticate(authorization_of(context))
        exchange.key = key.name
        specs = self._pipeline.upstreams.specs
        # Off the event loop when the body is large (images in base64, long histories).
        model, prepared = await self._pipeline.work_on_body(
            body, functools.partial(_prepare_body, body, content_type, specs)
        )
        # The log line and metrics of a request the bridge refuses name its model too.
        exchange.asked_for(model, known=model in self._pipeline.catalog)
        if isinstance(prepared, GatewayError):
            raise prepared
        return prepared

    async def _answer_of(self, answered: bytes, shape: ResponseShape | None) -> bytes:
        """The Response the client gets for a whole answer (the bridge's, off the event loop
        when it is large)."""
        if shape is None:
            return answered
        return await self._pipeline.work_on_body(
            answered, functools.partial(_bridged_answer, shape, answered)
        )

    @contextlib.asynccontextmanager
    async def _response_answer(
        self, body: bytes, content_type: str, context: observe.Context
    ) -> AsyncIterator[tuple[bytes | Stream, ResponseShape | None]]:
        try:
            prepared = await self._prepare(body, content_type, context)
        except Exception as exc:
            await abort(context, as_gateway_error(exc))
            raise AssertionError("unreachable: abort raises") from exc
        async with http_route.answer(
            self._pipeline,
            prepared.route,
            prepared.body,
            context,
            prepared.content_type,
            log_bodies=self._log_bodies,
        ) as answered:
            if isinstance(answered, Passthrough):
                raise AssertionError("unreachable: the responses routes do not pass through")
            yield answered, prepared.shape

    @observe.rpc("ChatService/CreateResponseHttp", transcoded=True)
    async def CreateResponseHttp(
        self,
        request: chat_pb2.CreateResponseHttpRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.CreateResponseHttpRequest, chat_pb2.CreateResponseHttpResponse
        ],
    ) -> AsyncGenerator[chat_pb2.CreateResponseHttpResponse, None]:
        http_body = request.http_body
        async with self._response_answer(http_body.data, http_body.content_type, context) as (
            answered,
            shape,
        ):
            exchange = observe.current()
            if isinstance(answered, bytes):
                data = await self._answer_of(answered, shape)
                exchange.sent_first_byte()
                for piece in http_route.http_messages(
                    chat_pb2.CreateResponseHttpResponse, data, JSON_TYPE
                ):
                    yield piece
                return
            frames = (
                _native_frames(answered)
                if shape is None
                else _bridged_frames(answered, shape, self._pipeline.max_answer_bytes)
            )
            # The first message's content type becomes the HTTP Content-Type.
            content_type = EVENT_STREAM
            with observe.streaming(exchange):
                async with contextlib.aclosing(frames):
                    async for frame in frames:
                        if frame != KEEPALIVE_FRAME:
                            exchange.sent_first_byte()
                        yield http_route.http_message(
                            chat_pb2.CreateResponseHttpResponse, frame, content_type
                        )
                        content_type = ""

    @observe.rpc("ChatService/CreateResponse")
    async def CreateResponse(
        self,
        request: chat_pb2.CreateResponseRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.CreateResponseRequest, chat_pb2.CreateResponseResponse
        ],
    ) -> chat_pb2.CreateResponseResponse:
        try:
            document = proto_json.struct_document(request.params)
            if document.get("stream"):
                raise invalid_request(
                    "CreateResponse answers whole responses: leave 'stream' unset, or call "
                    "POST /v1/responses for a stream.",
                    "stream",
                )
        except GatewayError as error:
            await abort(context, error)
            raise
        async with self._response_answer(orjson.dumps(document), JSON_TYPE, context) as (
            answered,
            shape,
        ):
            if not isinstance(answered, bytes):
                raise AssertionError("unreachable: the body does not stream")
            try:
                data = await self._answer_of(answered, shape)
                return _typed_response(orjson.loads(data))
            except Exception as exc:
                await abort(context, as_gateway_error(exc))
            raise AssertionError("unreachable: abort raises")


def _bridged_answer(shape: ResponseShape, completion: bytes) -> bytes:
    try:
        document = orjson.loads(completion)
        if not isinstance(document, dict):
            raise TypeError(f"expected an object, got {type(document).__name__}")
        return orjson.dumps(from_completion(shape, document))
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise GatewayError(
            502, "The upstream API's chat completion could not be read.", "api_error"
        ) from exc


async def _bridged_frames(
    stream: Stream, shape: ResponseShape, limit: int
) -> AsyncGenerator[bytes, None]:
    """The Responses API's events made of a chat completion stream, a network read's worth at
    a time; a failure ends the stream with `error` and `response.failed`. The bridge holds the
    whole response for its last event: a stream of over `limit` bytes fails."""
    events = EventStream(shape)
    yield b"".join(map(event_frame, events.start()))
    received = 0
    try:
        async with contextlib.aclosing(stream.batches()) as batches:
            async for batch in batches:
                if not batch:
                    yield KEEPALIVE_FRAME
                    continue
                made = []
                for data in batch:
                    received += len(data)
                    if received > limit:
                        raise GatewayError(
                            502,
                            f"The upstream API's stream is over {limit:,} bytes, more than "
                            "the gateway holds for one response (GATEWAY_MAX_ANSWER_BYTES).",
                            "api_error",
                        )
                    if data != DONE:
                        chunk = _chunk(data)
                        if isinstance(chunk, dict):
                            made += events.feed(chunk)
                    else:
                        made += events.finish()
                if made:
                    yield b"".join(map(event_frame, made))
    except Exception as exc:
        error = as_gateway_error(exc)
        observe.current().failed(error)
        yield b"".join(map(event_frame, events.fail(error.payload())))


def _chunk(data: bytes) -> Any:
    """A chat stream chunk as JSON; the upstream's 502 when it is none (the bridge cannot
    turn it into an event)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        garbled = GatewayError(502, "The upstream API sent a stream chunk that is not JSON.")
        raise observe.upstream_failed(garbled) from None


async def _native_frames(stream: Stream) -> AsyncGenerator[bytes, None]:
    """The upstream's own events, each under an `event:` line named like its type (the
    pipeline reads only `data`). The stream ends with its final event: the Responses API sends
    no `[DONE]` after it."""
    sequence = -1
    try:
        async with contextlib.aclosing(stream.batches()) as batches:
            async for batch in batches:
                if not batch:
                    yield KEEPALIVE_FRAME
                    continue
                frames, final = [], False
                for data in batch:
                    if data == DONE:
                        continue
                    kind, sequence = _event_type(data, sequence)
                    frames.append(
                        (b"event: " + kind.encode() + b"\n" if kind else b"")
                        + b"data: "
                        + data
                        + b"\n\n"
                    )
                    final = final or kind in FINAL_EVENTS
                yield b"".join(frames)
                if final:
                    return
    except Exception as exc:
        error = as_gateway_error(exc)
        observe.current().failed(error)
        event = {
            "type": "error",
            "sequence_number": sequence + 1,
            "code": str(error.status),
            "message": error.message,
            "param": error.param,
        }
        yield event_frame(event)


def _event_type(data: bytes, sequence: int) -> tuple[str, int]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "", sequence
    if not isinstance(event, dict):
        return "", sequence
    number = event.get("sequence_number")
    kind = event.get("type")
    # Only a plain name goes on the event line: a line break would forge another field.
    if not isinstance(kind, str) or not kind.isprintable():
        kind = ""
    return kind, number if isinstance(number, int) else sequence


def _typed_response(document: Any) -> chat_pb2.CreateResponseResponse:
    if not isinstance(document, dict):
        raise GatewayError(502, "The upstream API's response is not an object.", "api_error")
    usage = as_object(document.get("usage"))
    texts = [
        part.get("text", "")
        for item in document.get("output") or ()
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    whole = struct_pb2.Struct()
    json_format.ParseDict(document, whole)
    return chat_pb2.CreateResponseResponse(
        id=str(document.get("id") or ""),
        status=str(document.get("status") or ""),
        model=str(document.get("model") or ""),
        output_text="".join(texts),
        usage=chat_pb2.ResponseUsage(
            input_tokens=_int(usage.get("input_tokens")),
            cached_tokens=_int(as_object(usage.get("input_tokens_details")).get("cached_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            reasoning_tokens=_int(
                as_object(usage.get("output_tokens_details")).get("reasoning_tokens")
            ),
            total_tokens=_int(usage.get("total_tokens")),
        ),
        response=whole,
    )


def _int(value: Any) -> int:
    return value if type(value) is int else 0
