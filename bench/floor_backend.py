"""The architecture's floor: the least a backend behind the gateway's Envoy can do.

A ChatService that answers CreateChatCompletionHttp by posting the body to the upstream with
aiohttp and sending back what it says (a stream, read by read, one message per read, when its
Content-Type says so): no keys, limits, logs, metrics, retries, usage or redaction. Behind the
same Envoy config as the gateway, it shows what Envoy, grpcio and one upstream call cost on
this machine before any gateway feature runs. Not part of the product.

    python bench/floor_backend.py --grpc-port 50100 --upstream http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import grpc
import uvloop
from google.api import httpbody_pb2

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc


class FloorServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, upstream: str) -> None:
        self._url = f"{upstream}/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    async def CreateChatCompletionHttp(
        self,
        request: chat_pb2.CreateChatCompletionHttpRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[chat_pb2.CreateChatCompletionHttpResponse]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            self._url, data=request.http_body.data, headers={"content-type": "application/json"}
        ) as response:
            content_type = response.content_type
            if content_type != "text/event-stream":
                data = await response.read()
                yield _message(data, content_type)
                return
            async for data in response.content.iter_any():
                yield _message(data, content_type)
                content_type = ""  # the first message's type is the HTTP response's


def _message(data: bytes, content_type: str) -> chat_pb2.CreateChatCompletionHttpResponse:
    return chat_pb2.CreateChatCompletionHttpResponse(
        http_body=httpbody_pb2.HttpBody(content_type=content_type, data=data)
    )


async def serve(port: int, upstream: str) -> None:
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(FloorServicer(upstream), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:1/v1")
    args = parser.parse_args()
    uvloop.run(serve(args.grpc_port, args.upstream))


if __name__ == "__main__":
    main()
