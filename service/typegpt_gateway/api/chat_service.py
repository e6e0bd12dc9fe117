"""The chat service (chat completions and the model list). Each RPC is a thin edge: read
metadata, run the pipeline, shape the reply; errors end the call through `rpc.abort`."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Callable

import grpc

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

from ..errors import GatewayError
from ..ops import observe
from ..pipeline.answer import Passthrough, Stream
from ..pipeline.catalog import Catalog, Model
from ..pipeline.pipeline import Pipeline
from ..pipeline.routes import CHAT
from ..pipeline.sse import DONE
from . import http_route, proto_json
from .responses_service import ResponsesRpcs
from .rpc import abort, as_gateway_error, authorization_of

logger = logging.getLogger(__name__)


def _model_message(model: Model) -> chat_pb2.Model:
    return chat_pb2.Model(
        id=model.id, object="model", created=model.created, owned_by=model.owned_by
    )


class ChatServicer(ResponsesRpcs, chat_pb2_grpc.ChatServiceServicer):
    """Chat completions, the model list, and the Responses API (responses_service)."""

    def __init__(self, pipeline: Pipeline, catalog: Catalog, *, log_bodies: bool) -> None:
        self._pipeline = pipeline
        self._catalog = catalog
        self._log_bodies = log_bodies

    @observe.rpc("ChatService/CreateChatCompletionHttp", transcoded=True)
    async def CreateChatCompletionHttp(
        self,
        request: chat_pb2.CreateChatCompletionHttpRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.CreateChatCompletionHttpRequest, chat_pb2.CreateChatCompletionHttpResponse
        ],
    ) -> AsyncGenerator[chat_pb2.CreateChatCompletionHttpResponse, None]:
        answers = http_route.serve_http(
            self._pipeline,
            CHAT,
            request.http_body,
            context,
            chat_pb2.CreateChatCompletionHttpResponse,
            log_bodies=self._log_bodies,
        )
        async with contextlib.aclosing(answers):
            async for answer in answers:
                yield answer

    def _answer(
        self, body: bytes | Callable[[], bytes], context: observe.Context
    ) -> contextlib.AbstractAsyncContextManager[bytes | Stream | Passthrough]:
        return http_route.answer(self._pipeline, CHAT, body, context, log_bodies=self._log_bodies)

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
            if not isinstance(answer, Stream):
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
