"""A request's way through the gateway, whatever its OpenAI route (routes.py): auth → request
rules → catalog → limits → upstream.

`Pipeline.start` does everything that can still fail with a clean HTTP status; what it
returns is the whole JSON answer, a `Stream` whose failures can only be reported in band, as
SSE error frames, or (a route that passes its answer through) a `Passthrough`, with the
rate-limit headers for each. Its caller owns that
`Answer` and closes it however the request ends, which settles the request's account: exactly
once, since closing again does nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ..errors import GatewayError
from ..keystore.cache import KeyCache
from ..keystore.records import KeyRecord
from ..ops import observe
from ..upstream.failover import Failover, Opened
from ..upstream.timeouts import Deadlines
from .accounting import Accounting
from .answer import Answer, Passthrough, Stream, checked_answer, read_answer
from .catalog import Catalog
from .request import JSON_TYPE, ApiRequest, media_type
from .routes import CHAT, OpenAIRoute
from .usage_meter import (
    UsageMeter,
    rejects_stream_options,
    with_include_usage,
    with_usage_option,
)

# A body this large is read on a thread of its own, one such body at a time. Reading 16 MiB of
# small objects takes the CPU for most of a second: on the event loop that would stall every
# other client for as long; on the thread, the loop gets the interpreter back at every switch
# interval, and a client that sends many such bodies waits for its own turn.
LARGE_BODY_BYTES = 256 * 1024
# What reading a body gives (a request, a bridged one).
Read = TypeVar("Read")


class Pipeline:
    def __init__(
        self,
        keys: KeyCache,
        catalog: Catalog,
        upstreams: Failover,
        accounting: Accounting,
        *,
        keepalive: float,
        flush_interval: float,
        max_answer_bytes: int,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.upstreams = upstreams
        self.accounting = accounting
        self._keepalive = keepalive
        self._flush_interval = flush_interval
        # The most of one answer the gateway holds whole (GATEWAY_MAX_ANSWER_BYTES).
        self.max_answer_bytes = max_answer_bytes
        # Done when the gateway's drain time is up: open streams end with an error frame.
        self.stopping: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._large_bodies = ThreadPoolExecutor(1, thread_name_prefix="large-bodies")

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        return await self.keys.authenticate(authorization)

    async def start(
        self,
        body: bytes,
        authorization: str | None,
        content_type: str = JSON_TYPE,
        route: OpenAIRoute = CHAT,
    ) -> Answer:
        """The answer, which the caller must close (see `Answer.close`), or the error the
        client gets; an error after the request was admitted has settled it.

        `content_type` is the client's Content-Type header, as sent ("" when none)."""
        exchange = observe.current()
        key = await self.authenticate(authorization)
        exchange.key = key.name
        request = await self._parse(route, body, content_type)
        exchange.asked_for(request.model, known=request.model in self.catalog)
        exchange.stream = request.stream
        self.catalog.resolve(request.model, key, route)
        # A stream reports usage only if asked: the gateway asks whenever the client did not,
        # so that no client can choose the estimate over the upstream's count.
        ask_usage = request.stream and request.include_usage is not True
        meter = route.meter(request, strip_usage_chunk=ask_usage)
        account = await self.accounting.admit(key, request.model, meter)
        # Whatever raises from here on, the account is settled before it leaves.
        try:
            deadlines = self.upstreams.deadlines()
            sending = _Sending(route, request, body, content_type, deadlines)
            opened = await self._open(sending, ask_usage, meter)
            account.served_by(opened.upstream)
            response = opened.response
            if route.passthrough:
                passthrough = Passthrough(response, deadlines, stopping=self.stopping, meter=meter)
                return Answer(passthrough, account)
            if request.stream:
                stream = Stream(
                    response,
                    deadlines,
                    keepalive=self._keepalive,
                    flush_interval=self._flush_interval,
                    secrets=self.upstreams.secrets,
                    stopping=self.stopping,
                    meter=meter,
                )
                return Answer(stream, account)
            answer = await read_answer(response, deadlines, limit=self.max_answer_bytes)
            checked = await self.work_on_body(
                answer, functools.partial(checked_answer, answer, meter, self.upstreams.secrets)
            )
            return Answer(checked, account)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            # A client gone while waiting is counted with its prompt, which the upstream got.
            account.settle(error=not cancelled, usage=meter.usage() if cancelled else None)
            if isinstance(exc, GatewayError):
                headers = (*exc.headers, *account.headers)
                raise dataclasses.replace(exc, headers=headers) from exc
            raise

    async def work_on_body(self, body: bytes, work: Callable[[], Read]) -> Read:
        """`work()`, which reads `body` (a request's, or a whole answer's): on the event loop
        for a small body, on the large bodies' thread for a large one (LARGE_BODY_BYTES)."""
        if len(body) < LARGE_BODY_BYTES:
            return work()
        # In the request's context: its log lines and metrics know the request there too.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._large_bodies, context.run, work
        )

    async def _parse(self, route: OpenAIRoute, body: bytes, content_type: str) -> ApiRequest:
        return await self.work_on_body(body, functools.partial(route.parse, body, content_type))

    async def _open(self, sending: _Sending, ask_usage: bool, meter: UsageMeter) -> Opened:
        body = sending.body
        if not ask_usage:
            return await sending.send(self.upstreams, body)
        if sending.request.include_usage is None:
            asking: bytes | None = with_include_usage(body)
        else:
            asking = with_usage_option(body)
        if asking is not None:
            try:
                return await sending.send(self.upstreams, asking)
            except GatewayError as error:
                if not rejects_stream_options(error):
                    raise
            # An upstream without stream_options: the client's own bytes, usage estimated.
            meter.stop_stripping()
        return await sending.send(self.upstreams, body)


@dataclass(frozen=True, slots=True)
class _Sending:
    """One request on its way upstream."""

    route: OpenAIRoute
    request: ApiRequest
    body: bytes
    content_type: str
    deadlines: Deadlines

    @property
    def upstream_content_type(self) -> str:
        """JSON for a JSON body (whatever parameters the client's header had); any other (a
        multipart upload) goes as the client labelled it, its boundary included."""
        if media_type(self.content_type) in ("", JSON_TYPE):
            return JSON_TYPE
        return self.content_type

    async def send(self, upstreams: Failover, body: bytes) -> Opened:
        return await upstreams.open(
            self.request.model,
            body,
            stream=self.request.stream,
            deadlines=self.deadlines,
            call=self.route.call,
            content_type=self.upstream_content_type,
        )
