"""A chat completion's way through the gateway: auth → request rules → catalog → upstream.

`ChatPipeline.start` does everything that can still fail with a clean HTTP status; what it
returns is either the whole JSON answer or a `Stream` whose failures can only be reported in
band, as SSE error frames.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson

from .catalog import Catalog
from .errors import GatewayError, scrub
from .failover import Failover
from .keys import KeyRecord
from .sse import DONE, EventReader, is_error_event
from .store import KeyCache
from .timeouts import Deadlines


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    stream: bool


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param)


def _loads(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson stops at 64-bit integers; the standard library reads any size, and the
        # upstream gets the original bytes either way.
        return json.loads(body)


def parse_chat_request(body: bytes) -> ChatRequest:
    """The fields the gateway needs, or the 400 the client gets. The body itself is not changed."""
    try:
        document = _loads(body)
    except (ValueError, RecursionError):
        raise _invalid(
            "We could not parse the JSON body of your request. The body must be valid JSON "
            "(Content-Type: application/json)."
        ) from None
    if not isinstance(document, dict):
        raise _invalid("The request body must be a JSON object.")
    model = document.get("model")
    if model is None:
        raise _invalid("You must provide a model parameter.", "model")
    if not isinstance(model, str) or not model:
        raise _invalid("Invalid type for 'model': expected a non-empty string.", "model")
    messages = document.get("messages")
    if messages is None:
        raise _invalid("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list):
        raise _invalid("Invalid type for 'messages': expected an array of objects.", "messages")
    if not messages:
        raise _invalid("'messages' must contain at least one message.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(
                f"Invalid type for 'messages[{index}]': expected an object.", f"messages[{index}]"
            )
        if not isinstance(message.get("role"), str):
            raise _invalid(
                f"Missing required parameter: 'messages[{index}].role'.",
                f"messages[{index}].role",
            )
    stream = document.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("Invalid type for 'stream': expected a boolean.", "stream")
    return ChatRequest(model=model, stream=bool(stream))


def shutting_down() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down; retry the request.", "api_error")


class Stream:
    """An upstream SSE response, read as batches of event payloads."""

    def __init__(
        self,
        response: httpx.Response,
        deadlines: Deadlines,
        *,
        keepalive: float,
        secrets: tuple[str, ...],
        stopping: asyncio.Future[None],
    ) -> None:
        self._response = response
        self._deadlines = deadlines
        self._keepalive = keepalive
        self._secrets = secrets
        self._stopping = stopping

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Yields the `data` payloads of each network read as one batch, or an empty batch
        after `keepalive` seconds of silence. Returns after `[DONE]`; raises GatewayError when
        the upstream fails, ends early or stays silent too long, or the gateway stops, since
        the client must not mistake any of that for success."""
        loop = asyncio.get_running_loop()
        reader = EventReader()
        chunks = self._response.aiter_bytes().__aiter__()
        pending: asyncio.Future[bytes] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(chunks.__anext__())
                due, late = self._deadlines.next_read(loop.time())
                while True:
                    silence = min(self._keepalive, due - loop.time())
                    done, _ = await asyncio.wait(
                        (pending, self._stopping),
                        timeout=max(silence, 0.0),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if pending in done:
                        break
                    if self._stopping.done():
                        raise shutting_down()
                    if loop.time() >= due:
                        raise late
                    yield []
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    raise GatewayError(
                        502,
                        "The upstream API ended the stream before it was complete.",
                        "api_error",
                    ) from None
                self._deadlines.got_bytes()
                batch = []
                for data in reader.feed(chunk):
                    if data == DONE:
                        if batch:
                            yield batch
                        return
                    if is_error_event(data):
                        if batch:
                            yield batch
                        raise self._in_band_error(data)
                    batch.append(data)
                if batch:
                    yield batch
        except httpx.HTTPError as exc:
            raise GatewayError(
                502, f"The upstream API stream broke ({type(exc).__name__}).", "api_error"
            ) from exc
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            await self._response.aclose()

    def _in_band_error(self, data: bytes) -> GatewayError:
        try:
            error = orjson.loads(data)["error"]
            message = error.get("message") if isinstance(error, dict) else error
        except (orjson.JSONDecodeError, KeyError, AttributeError):
            message = None
        text = scrub(message, self._secrets) if isinstance(message, str) else "unknown error"
        return GatewayError(502, f"The upstream API failed mid-stream: {text}", "api_error")


async def read_answer(response: httpx.Response, deadlines: Deadlines) -> bytes:
    """A whole non-streamed answer, each read bounded by the deadlines."""
    loop = asyncio.get_running_loop()
    answer = bytearray()
    chunks = response.aiter_bytes().__aiter__()
    try:
        while True:
            due, late = deadlines.next_read(loop.time())
            try:
                async with asyncio.timeout_at(due):
                    answer += await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise late from None
            deadlines.got_bytes()
    except httpx.HTTPError as exc:
        raise GatewayError(
            502, f"The upstream API answer broke off ({type(exc).__name__}).", "api_error"
        ) from exc
    finally:
        await response.aclose()
    if not answer.lstrip().startswith(b"{"):
        raise GatewayError(502, "The upstream API answered with something not JSON.")
    return bytes(answer)


class ChatPipeline:
    def __init__(
        self, keys: KeyCache, catalog: Catalog, upstreams: Failover, *, keepalive: float
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.upstreams = upstreams
        self._keepalive = keepalive
        # Done when the gateway's drain time is up: open streams end with an error frame.
        self.stopping: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        return await self.keys.authenticate(authorization)

    async def start(self, body: bytes, authorization: str | None) -> bytes | Stream:
        key = await self.authenticate(authorization)
        request = parse_chat_request(body)
        self.catalog.resolve(request.model, key)
        deadlines = self.upstreams.deadlines()
        response = await self.upstreams.open(
            request.model, body, stream=request.stream, deadlines=deadlines
        )
        if not request.stream:
            return await read_answer(response, deadlines)
        return Stream(
            response,
            deadlines,
            keepalive=self._keepalive,
            secrets=self.upstreams.secrets,
            stopping=self.stopping,
        )
