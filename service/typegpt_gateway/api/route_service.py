"""The route service: OpenAI's routes beside chat (embeddings, legacy completions, images,
audio). Each HttpBody RPC names its route (pipeline/routes.py) and is served as chat's is
(http_route.py); the typed embeddings RPC shapes its request and answer."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc

from typegpt.gateway.v1 import routes_pb2, routes_pb2_grpc

from ..ops import observe
from ..pipeline.pipeline import Pipeline
from ..pipeline.routes import COMPLETIONS, EMBEDDINGS, IMAGES, SPEECH, TRANSCRIPTIONS, OpenAIRoute
from . import http_route, proto_json
from .rpc import abort, as_gateway_error


def _http_rpc(
    name: str, route: OpenAIRoute, message: Callable[[], http_route.Message]
) -> Callable[[RouteServicer, Any, observe.Context], AsyncGenerator[http_route.Message, None]]:
    """The HttpBody RPC `name` of `route`, whose response messages `message` makes."""

    @observe.rpc(f"RouteService/{name}", transcoded=True)
    async def serve(
        self: RouteServicer, request: Any, context: observe.Context
    ) -> AsyncGenerator[http_route.Message, None]:
        answers = http_route.serve_http(
            self.pipeline, route, request.http_body, context, message, log_bodies=self.log_bodies
        )
        async with contextlib.aclosing(answers):
            async for answer in answers:
                yield answer

    serve.__name__ = serve.__qualname__ = name
    return serve


class RouteServicer(routes_pb2_grpc.RouteServiceServicer):
    def __init__(self, pipeline: Pipeline, *, log_bodies: bool) -> None:
        self.pipeline = pipeline
        self.log_bodies = log_bodies

    CreateEmbeddingHttp = _http_rpc(
        "CreateEmbeddingHttp", EMBEDDINGS, routes_pb2.CreateEmbeddingHttpResponse
    )
    CreateCompletionHttp = _http_rpc(
        "CreateCompletionHttp", COMPLETIONS, routes_pb2.CreateCompletionHttpResponse
    )
    CreateImageHttp = _http_rpc("CreateImageHttp", IMAGES, routes_pb2.CreateImageHttpResponse)
    CreateSpeechHttp = _http_rpc("CreateSpeechHttp", SPEECH, routes_pb2.CreateSpeechHttpResponse)
    CreateTranscriptionHttp = _http_rpc(
        "CreateTranscriptionHttp", TRANSCRIPTIONS, routes_pb2.CreateTranscriptionHttpResponse
    )

    @observe.rpc("RouteService/CreateEmbedding")
    async def CreateEmbedding(
        self,
        request: routes_pb2.CreateEmbeddingRequest,
        context: grpc.aio.ServicerContext[
            routes_pb2.CreateEmbeddingRequest, routes_pb2.CreateEmbeddingResponse
        ],
    ) -> routes_pb2.CreateEmbeddingResponse:
        body = functools.partial(proto_json.embedding_body, request)
        async with http_route.answer(
            self.pipeline, EMBEDDINGS, body, context, log_bodies=self.log_bodies
        ) as answer:
            if not isinstance(answer, bytes):  # embeddings never stream
                raise AssertionError("unreachable")
            try:
                return proto_json.parse_embeddings(answer)
            except Exception as exc:
                await abort(context, as_gateway_error(exc))
            raise AssertionError("unreachable: abort raises")
