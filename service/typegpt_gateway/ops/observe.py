"""One request as the operator sees it: its request id, one JSON log line, and its metrics.

The servicer opens an `Exchange` per RPC with `observed()`. The layers below add what they
learn (key name and model from the pipeline, upstream and retries from failover, tokens from
accounting) to `current()`, so that no signature on the way has to carry it; each RPC runs in
its own asyncio task, so `current()` is that RPC's. When the RPC ends, the Exchange writes the
log line and updates the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

import grpc

from ..errors import GatewayError
from . import metrics

if TYPE_CHECKING:
    from ..usage import Usage

REQUEST_ID = "x-request-id"
# A client's id is honoured when it is this short and printable; otherwise a new one is made.
MAX_REQUEST_ID_CHARS = 200
# Bodies logged with GATEWAY_LOG_BODIES are cut here: a 32 MiB prompt is not a log line.
MAX_LOGGED_BODY_BYTES = 64 * 1024
# nginx's "client closed request": the client went away before the answer was complete.
CLIENT_CLOSED = 499
# A model name in a log line is cut here: a client can send one of megabytes.
MAX_LOGGED_MODEL_CHARS = 100
# The metric label of a model the catalog does not know: made-up names make no new series.
UNKNOWN_MODEL = "unknown"

request_log = logging.getLogger("typegpt_gateway.requests")


@dataclass
class Exchange:
    route: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    key: str | None = None
    # As the client named it (cut), for the log; `model_label` is what metrics carry.
    model: str | None = None
    model_label: str = ""
    stream: bool = False
    status: int = 200
    error_type: str | None = None
    first_byte: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_estimated: bool | None = None
    upstream: str | None = None
    retries: int = 0
    body: bytes | None = None
    headers_sent: bool = False
    # An RPC behind Envoy's REST route, where Envoy returns x-request-id on every response.
    transcoded: bool = False

    def failed(self, error: GatewayError) -> None:
        self.status = error.status
        self.error_type = error.type

    def asked_for(self, model: str, *, known: bool) -> None:
        """The model the request names; `known`: whether the catalog has it."""
        self.model = model[:MAX_LOGGED_MODEL_CHARS]
        self.model_label = model if known else UNKNOWN_MODEL

    def sent_first_byte(self) -> None:
        if self.first_byte is None:
            self.first_byte = time.monotonic()

    def used(self, usage: Usage) -> None:
        """The request's tokens, as accounting counts them (reported, or else estimated)."""
        self.prompt_tokens, self.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        self.tokens_estimated = usage.estimated

    def log_fields(self, now: float) -> dict[str, object]:
        fields: dict[str, object] = {
            "request_id": self.request_id,
            "route": self.route,
            "key": self.key,
            "model": self.model,
            "stream": self.stream,
            "status": self.status,
            "error_type": self.error_type,
            "latency_ms": round((now - self.started) * 1000, 1),
            "ttfb_ms": None
            if self.first_byte is None
            else round((self.first_byte - self.started) * 1000, 1),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_estimated": self.tokens_estimated,
            "upstream": self.upstream,
            "retries": self.retries,
        }
        if self.body is not None:
            fields["request_body"] = self.body[:MAX_LOGGED_BODY_BYTES].decode("utf-8", "replace")
        return fields

    def finish(self) -> None:
        now = time.monotonic()
        request_log.info("request", extra=self.log_fields(now))
        model, key, status = self.model_label, self.key or "", str(self.status)
        metrics.REQUESTS.labels(self.route, model, key, status).inc()
        metrics.REQUEST_SECONDS.labels(self.route, model).observe(now - self.started)
        if self.first_byte is not None and self.status < 400:
            metrics.TTFB_SECONDS.labels(self.route, model).observe(self.first_byte - self.started)
        if self.prompt_tokens is not None:
            metrics.TOKENS.labels(model, key, "in").inc(self.prompt_tokens)
        if self.completion_tokens is not None:
            metrics.TOKENS.labels(model, key, "out").inc(self.completion_tokens)


_current: ContextVar[Exchange | None] = ContextVar("exchange", default=None)


def current() -> Exchange:
    """The running RPC's Exchange; outside an RPC (unit tests), a throwaway one."""
    exchange = _current.get()
    return exchange if exchange is not None else Exchange("none", new_request_id())


def running() -> Exchange | None:
    return _current.get()


def new_request_id() -> str:
    return str(uuid.uuid4())


def request_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The client's x-request-id (Envoy sets one when the client did not), else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID and isinstance(value, str) and _acceptable_id(value):
            return value
    return new_request_id()


def _acceptable_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable()


def upstream_failed(error: GatewayError) -> GatewayError:
    """Counts a failure of the upstream the running request uses (an attempt refused, or an
    answer broken off); returns `error`, to be raised."""
    upstream = current().upstream or ""
    metrics.UPSTREAM_ERRORS.labels(upstream, str(error.status)).inc()
    return error


def retrying_on(upstream: str) -> None:
    """The running request's next attempt goes to `upstream`: the one it ends on is logged."""
    exchange = current()
    if exchange.upstream is not None:
        exchange.retries += 1
        metrics.UPSTREAM_RETRIES.labels(upstream).inc()
    exchange.upstream = upstream


@contextlib.contextmanager
def observed(
    route: str,
    metadata: Iterable[tuple[str, str | bytes]] | None,
    *,
    body: bytes | None = None,
    transcoded: bool = False,
) -> Iterator[Exchange]:
    """An Exchange for the RPC running in this task, finished (logged, counted) on exit."""
    exchange = Exchange(route, request_id_from(metadata), body=body, transcoded=transcoded)
    # Not reset on exit: each RPC is its own task with its own copy of the context, and an
    # async generator may be closed from another context, where a reset would fail.
    _current.set(exchange)
    metrics.INFLIGHT_REQUESTS.inc()
    try:
        yield exchange
    # A stream's RPC cancelled while gRPC was sending a message, not waiting on ours, leaves
    # it suspended at a yield, closed later with GeneratorExit: its client left all the same.
    except (asyncio.CancelledError, GeneratorExit):
        exchange.status = CLIENT_CLOSED
        raise
    except BaseException:
        # An abort already recorded the client's error; anything else is ours.
        if exchange.status < 400:
            exchange.status = 500
        raise
    finally:
        metrics.INFLIGHT_REQUESTS.dec()
        exchange.finish()


@contextlib.contextmanager
def streaming(exchange: Exchange) -> Iterator[None]:
    """Around the sending of a streamed answer: counted in the in-flight streams gauge."""
    exchange.stream = True
    metrics.INFLIGHT_STREAMS.inc()
    try:
        yield
    finally:
        metrics.INFLIGHT_STREAMS.dec()


# A servicer method's context: any RPC's, whatever its messages.
Context = grpc.aio.ServicerContext[Any, Any]
_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Answer = TypeVar("_Answer")
_Streamed = Callable[[_Servicer, _Request, Context], AsyncGenerator[_Answer, None]]
_Unary = Callable[[_Servicer, _Request, Context], Coroutine[Any, Any, _Answer]]


class _Observer:
    """rpc()'s decorator: the servicer method it wraps keeps its signature."""

    def __init__(self, route: str, transcoded: bool) -> None:
        self._route = route
        self._transcoded = transcoded

    @overload
    def __call__(
        self, handler: _Streamed[_Servicer, _Request, _Answer], /
    ) -> _Streamed[_Servicer, _Request, _Answer]: ...

    @overload
    def __call__(
        self, handler: _Unary[_Servicer, _Request, _Answer], /
    ) -> _Unary[_Servicer, _Request, _Answer]: ...

    def __call__(self, handler: Callable[..., Any], /) -> Callable[..., Any]:
        route, transcoded = self._route, self._transcoded
        if inspect.isasyncgenfunction(handler):

            @functools.wraps(handler)
            async def streamed(
                servicer: object, request: object, context: Context
            ) -> AsyncGenerator[Any, None]:
                with observed(route, context.invocation_metadata(), transcoded=transcoded):
                    answers = handler(servicer, request, context)
                    async with contextlib.aclosing(answers):
                        async for answer in answers:
                            await send_headers(context)
                            yield answer

            return streamed

        @functools.wraps(handler)
        async def unary(servicer: object, request: object, context: Context) -> Any:
            with observed(route, context.invocation_metadata(), transcoded=transcoded):
                answer = await handler(servicer, request, context)
                await send_headers(context)
                return answer

        return unary


def rpc(route: str, *, transcoded: bool = False) -> _Observer:
    """Observes a servicer method (unary or server-streaming) as `route`, and returns the
    request id in the initial metadata of an answer; an error carries it in its trailing
    metadata instead (servicer.abort), since nothing was sent before. A `transcoded` method
    (the one behind Envoy's REST route) sends it in trailing metadata: see send_headers."""
    return _Observer(route, transcoded)


async def send_headers(context: Context, headers: Sequence[tuple[str, str]] = ()) -> None:
    """Sends the answer's initial metadata once: `headers` (such as the rate-limit ones) and
    the request id."""
    exchange = current()
    if exchange.headers_sent:
        return
    exchange.headers_sent = True
    if exchange.transcoded and not headers:
        # Envoy returns x-request-id itself, so only gRPC callers need it: in the trailers,
        # which go out with the status anyway. A send of its own costs ~40 µs of CPU.
        context.set_trailing_metadata(((REQUEST_ID, exchange.request_id),))
        return
    await context.send_initial_metadata((*headers, (REQUEST_ID, exchange.request_id)))
