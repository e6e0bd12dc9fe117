"""The chat service (chat completions and the model list). Each RPC is a thin edge: read
metadata, run the pipeline, shape the reply; errors end the call through `rpc.abort`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

from ..chat.answer import Stream
from ..chat.catalog import Catalog, Model
from ..chat.pipeline import ChatPipeline
from ..chat.sse import DONE, DONE_FRAME, KEEPALIVE_FRAME, data_frame
from ..errors import GatewayError
from ..ops import observe
from . import proto_json
from .rpc import abort, as_gateway_error, authorization_of

logger = logging.getLogger(__name__)

JSON = "application/json"
EVENT_STREAM = "text/event-stream"


def _model_message(model: Model) -> chat_pb2.Model:
    return chat_pb2.Model(
        id=model.id, object="model", created=model.created, owned_by=model.owned_by
    )


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, pipeline: ChatPipeline, catalog: Catalog, *, log_bodies: bool) -> None:
        self._pipeline = pipeline
        self._catalog = catalog
        self._log_bodies = log_bodies

    @contextlib.asynccontextmanager
    async def _answer(
        self,
        body: bytes | Callable[[], bytes],
        context: observe.Context,
        content_type: str = JSON,
    ) -> AsyncIterator[bytes | Stream]:
        """The answer to a chat request, its rate-limit headers sent as initial metadata
        (HTTP headers through Envoy). The one owner of the answer: however the block is
        left (an error, the client gone, a stream never read), the answer is closed, which
        settles the request. `body` may be a function that builds it, so that its failures
        are shaped too."""
        try:
            if callable(body):
                body = body()
            if self._log_bodies:
                observe.current().body = body
            answer = await self._pipeline.start(body, authorization_of(context), content_type)
        except Exception as exc:
            await abort(context, as_gateway_error(exc))
            raise AssertionError("unreachable: abort raises") from exc
        failed = True
        try:
            await observe.send_headers(context, answer.headers)
            yield answer.body
            failed = False
        except (asyncio.CancelledError, GeneratorExit):
            failed = False  # the client went away: its choice, not an error
            raise
        finally:
            answer.close(failed=failed)

    @observe.rpc("ChatService/CreateChatCompletionHttp", transcoded=True)
    async def CreateChatCompletionHttp(
        self,
        request: chat_pb2.CreateChatCompletionHttpRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.CreateChatCompletionHttpRequest, chat_pb2.CreateChatCompletionHttpResponse
        ],
    ) -> AsyncGenerator[chat_pb2.CreateChatCompletionHttpResponse, None]:
        # Envoy's transcoder puts the client's Content-Type header, as sent, in the HttpBody.
        http_body = request.http_body
        async with self._answer(http_body.data, context, http_body.content_type) as answer:
            exchange = observe.current()
            if isinstance(answer, bytes):
                exchange.sent_first_byte()
                yield _http_message(answer, JSON)
                return
            # The first message's content type becomes the HTTP Content-Type.
            content_type = EVENT_STREAM
            with observe.streaming(exchange):
                try:
                    async with contextlib.aclosing(answer.batches()) as batches:
                        async for batch in batches:
                            if batch:
                                frames = b"".join(map(data_frame, batch))
                                if frames != DONE_FRAME:  # [DONE] is no byte of the answer
                                    exchange.sent_first_byte()
                            else:
                                frames = KEEPALIVE_FRAME  # not a byte of the answer yet
                            yield _http_message(frames, content_type)
                            content_type = ""
                except Exception as exc:
                    # Headers are gone: only an in-band error frame can tell the client.
                    error = as_gateway_error(exc)
                    exchange.failed(error)
                    yield _http_message(data_frame(error.to_json().encode()), content_type)

    @observe.rpc("ChatService/CreateChatCompletion")
    async def CreateChatCompletion(
        self,
        request: chat_pb2.CreateChatCompletionRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.CreateChatCompletionRequest, chat_pb2.CreateChatCompletionResponse
        ],
    ) -> chat_pb2.CreateChatCompletionResponse:
        body = functools.partial(proto_json.request_body, request.params, stream=False)
        async with self._answer(body, context) as answer:
            if not isinstance(answer, bytes):  # the body says stream: false
                raise AssertionError("unreachable")
            try:
                return proto_json.parse_answer(answer, chat_pb2.CreateChatCompletionResponse())
            except Exception as exc:
                await abort(context, as_gateway_error(exc))
            raise AssertionError("unreachable: abort raises")

    @observe.rpc("ChatService/StreamChatCompletion")
    async def StreamChatCompletion(
        self,
        request: chat_pb2.StreamChatCompletionRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.StreamChatCompletionRequest, chat_pb2.StreamChatCompletionResponse
        ],
    ) -> AsyncGenerator[chat_pb2.StreamChatCompletionResponse, None]:
        body = functools.partial(
            proto_json.request_body,
            request.params,
            stream=True,
            include_usage=request.include_usage,
        )
        async with self._answer(body, context) as answer:
            if isinstance(answer, bytes):
                raise AssertionError("unreachable: the body says stream: true")
            exchange = observe.current()
            with observe.streaming(exchange):
                try:
                    async with contextlib.aclosing(answer.batches()) as batches:
                        async for batch in batches:
                            for data in batch:
                                if data == DONE:
                                    break
                                exchange.sent_first_byte()
                                yield proto_json.parse_answer(
                                    data, chat_pb2.StreamChatCompletionResponse()
                                )
                except Exception as exc:
                    await abort(context, as_gateway_error(exc))

    @observe.rpc("ChatService/ListModels")
    async def ListModels(
        self,
        request: chat_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[chat_pb2.ListModelsRequest, chat_pb2.ListModelsResponse],
    ) -> chat_pb2.ListModelsResponse:
        try:
            key = await self._pipeline.authenticate(authorization_of(context))
        except GatewayError as error:
            await abort(context, error)
            raise
        return chat_pb2.ListModelsResponse(
            object="list", data=[_model_message(model) for model in self._catalog.visible_to(key)]
        )

    @observe.rpc("ChatService/GetModel")
    async def GetModel(
        self,
        request: chat_pb2.GetModelRequest,
        context: grpc.aio.ServicerContext[chat_pb2.GetModelRequest, chat_pb2.Model],
    ) -> chat_pb2.Model:
        try:
            key = await self._pipeline.authenticate(authorization_of(context))
            model = self._catalog.resolve(request.model, key)
        except GatewayError as error:
            await abort(context, error)
            raise
        return _model_message(model)


def _http_message(data: bytes, content_type: str) -> chat_pb2.CreateChatCompletionHttpResponse:
    # Filled in place: an HttpBody built apart is copied into the message (3 times slower,
    # once per chunk of a stream).
    message = chat_pb2.CreateChatCompletionHttpResponse()
    body = message.http_body
    body.content_type = content_type
    body.data = data
    return message
