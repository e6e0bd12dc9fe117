"""What a gRPC call must show before the server reads its request message.

gRPC reads a unary call's request message whole before the handler runs, and grpc core gives
that no time limit: a caller that sends the headers and most of a 30 MiB message, then stalls,
holds that memory for as long as it keeps the stream open. So, on the call's headers:

- a call to a service that needs a key, without a well-formed `authorization` (the rule of
  keys.bearer_token) or with several, is refused at once with the error the service itself
  would give;
- any other call with a single request message gets `message_timeout` seconds to deliver it,
  then 408 (DEADLINE_EXCEEDED), as Envoy answers a REST client that is as slow;
- a message protobuf cannot parse (a string field that is not UTF-8) is a 400.

Envoy's Lua filter refuses REST requests without a key the same way; native gRPC passes Envoy
untouched and unbuffered, and meets this guard. Calls whose requests stream (reflection) are
left alone: their messages are read by the handler, as it asks for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..errors import GatewayError
from ..keystore.records import bearer_token
from ..ops import observe
from .access import KEY_SERVICES
from .rpc import abort, authorization_of


def message_timeout_error() -> GatewayError:
    return GatewayError(408, "The request was not received in time.", "timeout_error")


def undecodable_message_error() -> GatewayError:
    # Through Envoy, a path parameter whose percent-decoding is not UTF-8 (the transcoder puts
    # its bytes in a string field); on the gRPC port, any message protobuf cannot parse.
    return GatewayError(
        400,
        "The request could not be decoded: its text, the URL's path included, must be UTF-8.",
    )


def _route(method: str) -> str:
    """`/typegpt.gateway.v1.ChatService/ListModels` as the servicer names it in logs and
    metrics: `ChatService/ListModels`."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


class CallGuard(grpc.aio.ServerInterceptor):
    """`refusals` maps each service of KEY_SERVICES to the error of a call without a key."""

    def __init__(
        self, refusals: Mapping[str, Callable[[], GatewayError]], message_timeout: float
    ) -> None:
        if set(refusals) != KEY_SERVICES:
            raise ValueError(f"a refusal for each of {sorted(KEY_SERVICES)} is needed")
        self._refusals = refusals
        self._message_timeout = message_timeout
        # Per method, the handler grpc found and its guarded twin: made once, not per call.
        # Bounded: only methods the server serves get here.
        self._guarded: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        refusal = self._refusals.get(method.lstrip("/").partition("/")[0])
        guarded = _guarded(handler, _route(method), refusal, self._message_timeout)
        self._guarded[method] = (handler, guarded)
        return guarded


async def _refuse(context: observe.Context, route: str, error: GatewayError) -> None:
    """Ends the call with `error`, logged and counted like any other answer; never returns."""
    with observe.observed(route, context.invocation_metadata()):
        await abort(context, error)


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any],
    route: str,
    refusal: Callable[[], GatewayError] | None,
    timeout: float,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler, declared request-streaming so that it runs before the request message
    is read: it checks the key, then reads the one message itself, within `timeout` seconds."""

    async def request(context: observe.Context) -> Any:
        if refusal is not None:
            try:
                authorization = authorization_of(context)
            except GatewayError as error:
                await _refuse(context, route, error)
                raise AssertionError("unreachable: _refuse raises") from error
            if bearer_token(authorization) is None:
                await _refuse(context, route, refusal())
        try:
            async with asyncio.timeout(timeout):
                message = await context.read()
        except TimeoutError as exc:
            await _refuse(context, route, message_timeout_error())
            raise AssertionError("unreachable: _refuse raises") from exc
        except DecodeError as exc:
            # The client's fault, found before any handler runs: a 400, not grpc's 500 that
            # names the exception and logs its traceback.
            await _refuse(context, route, undecodable_message_error())
            raise AssertionError("unreachable: _refuse raises") from exc
        if message is grpc.aio.EOF:  # the caller half-closed without sending one
            await _refuse(context, route, GatewayError(400, "The call carried no request message."))
        return message

    behavior = _behavior(handler)
    if not handler.response_streaming:

        async def unary(requests: AsyncIterator[Any], context: observe.Context) -> Any:
            return await behavior(await request(context), context)

        return _request_streaming(handler, unary)

    if inspect.isasyncgenfunction(behavior):

        async def streamed(
            requests: AsyncIterator[Any], context: observe.Context
        ) -> AsyncIterator[Any]:
            async with contextlib.aclosing(behavior(await request(context), context)) as answers:
                async for answer in answers:
                    yield answer

        return _request_streaming(handler, streamed)

    # A streaming handler that writes with context.write (grpc.health's Watch).
    async def written(requests: AsyncIterator[Any], context: observe.Context) -> None:
        await behavior(await request(context), context)

    return _request_streaming(handler, written)


def _behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    """The handler's behaviour for its one request message. grpc's stubs type it as the sync
    server calls it; grpc.aio calls it with its own context and awaits (or iterates) what it
    returns, so it is only known to be callable."""
    behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
    if behavior is None:
        raise TypeError("a method handler without the behaviour its kind calls for")
    return behavior


def _request_streaming(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Callable[..., Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    make = (
        grpc.stream_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.stream_unary_rpc_method_handler
    )
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
