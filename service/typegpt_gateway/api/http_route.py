"""Serving an OpenAI route through the pipeline, for the RPCs of any service: `answer`, the one
owner of a request's answer, and `serve_http`, the body of every HttpBody RPC (the REST routes
Envoy transcodes), which sends the client's exact bytes and returns the upstream's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Protocol, TypeVar

from google.api import httpbody_pb2

from ..ops import observe
from ..pipeline.answer import Passthrough, Stream
from ..pipeline.pipeline import Pipeline
from ..pipeline.routes import OpenAIRoute
from ..pipeline.sse import DONE_FRAME, KEEPALIVE_FRAME, data_frame
from ..upstream.client import EVENT_STREAM
from .rpc import abort, as_gateway_error, authorization_of

JSON = "application/json"


class HttpMessage(Protocol):
    """A response message that carries an HttpBody, as each HttpBody RPC's does."""

    @property
    def http_body(self) -> httpbody_pb2.HttpBody: ...


Message = TypeVar("Message", bound=HttpMessage)


# A whole answer larger than this goes out in pieces of this size: a gRPC message is capped
# (GATEWAY_MAX_BODY_BYTES), and Envoy writes each piece on as it comes, the same bytes.
ANSWER_PIECE_BYTES = 4 * 1024 * 1024


def http_messages(
    message: Callable[[], Message], data: bytes, content_type: str
) -> Iterator[Message]:
    """The response messages of an HttpBody RPC holding a whole answer `data`: one, or
    pieces of ANSWER_PIECE_BYTES, the first with the content type."""
    if len(data) <= ANSWER_PIECE_BYTES:  # nearly every answer: no copy
        yield http_message(message, data, content_type)
        return
    view = memoryview(data)
    for start in range(0, len(data), ANSWER_PIECE_BYTES):
        yield http_message(message, bytes(view[start : start + ANSWER_PIECE_BYTES]), content_type)
        content_type = ""


def http_message(message: Callable[[], Message], data: bytes, content_type: str) -> Message:
    """A new response message of an HttpBody RPC holding `data`. Filled in place: an HttpBody
    built apart is copied into the message (3 times slower, once per chunk of a stream)."""
    made = message()
    body = made.http_body
    body.content_type = content_type
    body.data = data
    return made


@contextlib.asynccontextmanager
async def answer(
    pipeline: Pipeline,
    route: OpenAIRoute,
    body: bytes | Callable[[], bytes],
    context: observe.Context,
    content_type: str = JSON,
    *,
    log_bodies: bool,
) -> AsyncIterator[bytes | Stream | Passthrough]:
    """The answer to a request on `route`, its rate-limit headers sent as initial metadata
    (HTTP headers through Envoy). The one owner of the answer: however the block is left (an
    error, the client gone, a stream never read), the answer is closed, which settles the
    request. `body` may be a function that builds it, so that its failures are shaped too."""
    try:
        if callable(body):
            body = body()
        if log_bodies:
            observe.current().body = body
        started = await pipeline.start(body, authorization_of(context), content_type, route)
    except Exception as exc:
        await abort(context, as_gateway_error(exc))
        raise AssertionError("unreachable: abort raises") from exc
    failed = True
    try:
        await observe.send_headers(context, started.headers)
        yield started.body
        failed = False
    except (asyncio.CancelledError, GeneratorExit):
        failed = False  # the client went away: its choice, not an error
        raise
    finally:
        started.close(failed=failed)


async def serve_http(
    pipeline: Pipeline,
    route: OpenAIRoute,
    http_body: httpbody_pb2.HttpBody,
    context: observe.Context,
    message: Callable[[], Message],
    *,
    log_bodies: bool,
) -> AsyncGenerator[Message, None]:
    """An HttpBody RPC's answers: one `application/json` message, the SSE frames of a stream
    as they arrive, or a passthrough answer's bytes as they arrive. `message` makes an empty
    response message of the RPC."""

    def reply(data: bytes, content_type: str) -> Message:
        return http_message(message, data, content_type)

    # Envoy's transcoder puts the client's Content-Type header, as sent, in the HttpBody.
    async with answer(
        pipeline, route, http_body.data, context, http_body.content_type, log_bodies=log_bodies
    ) as answered:
        exchange = observe.current()
        if isinstance(answered, bytes):
            exchange.sent_first_byte()
            for piece in http_messages(message, answered, JSON):
                yield piece
            return
        if isinstance(answered, Passthrough):
            content_type = answered.content_type
            with observe.streaming(exchange):
                try:
                    async with contextlib.aclosing(answered.chunks()) as chunks:
                        async for chunk in chunks:
                            exchange.sent_first_byte()
                            yield reply(chunk, content_type)
                            content_type = ""
                except Exception as exc:
                    # Bytes such as audio have no in-band error: the call ends with the error,
                    # which a gRPC caller sees; through Envoy, a REST client's answer ends
                    # where the upstream's broke off (the log and the ledger count the error).
                    await abort(context, as_gateway_error(exc))
            if content_type:  # an empty answer still has its headers
                yield reply(b"", content_type)
            return
        # The first message's content type becomes the HTTP Content-Type.
        content_type = EVENT_STREAM
        with observe.streaming(exchange):
            try:
                async with contextlib.aclosing(answered.batches()) as batches:
                    async for batch in batches:
                        if batch:
                            frames = b"".join(map(data_frame, batch))
                            if frames != DONE_FRAME:  # [DONE] is no byte of the answer
                                exchange.sent_first_byte()
                        else:
                            frames = KEEPALIVE_FRAME  # not a byte of the answer yet
                        yield reply(frames, content_type)
                        content_type = ""
            except Exception as exc:
                # Headers are gone: only an in-band error frame can tell the client.
                error = as_gateway_error(exc)
                exchange.failed(error)
                yield reply(data_frame(error.to_json().encode()), content_type)
