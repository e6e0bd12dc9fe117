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
from .keys import KeyRecord
from .redaction import redact_bytes
from .sse import DONE, EventReader, is_error_event
from .store import KeyCache
from .upstream import Upstream, timeout_error


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


class Stream:
    """An upstream SSE response, read as batches of event payloads."""

    def __init__(
        self, response: httpx.Response, keepalive: float, secrets: tuple[str, ...]
    ) -> None:
        self._response = response
        self._keepalive = keepalive
        self._secrets = secrets

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Yields the `data` payloads of each network read as one batch, or an empty batch
        after `keepalive` seconds of silence. Returns after `[DONE]`; raises GatewayError when
        the upstream fails or ends early, since the client must not mistake that for success."""
        reader = EventReader()
        chunks = self._response.aiter_raw().__aiter__()
        pending: asyncio.Future[bytes] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(chunks.__anext__())
                while not (await asyncio.wait((pending,), timeout=self._keepalive))[0]:
                    yield []
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    raise GatewayError(
                        502,
                        "The upstream API ended the stream before it was complete.",
                        "api_error",
                    ) from None
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
                    batch.append(redact_bytes(data))
                if batch:
                    yield batch
        except httpx.TimeoutException as exc:
            raise timeout_error() from exc
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


class ChatPipeline:
    def __init__(
        self, keys: KeyCache, catalog: Catalog, upstream: Upstream, *, keepalive: float
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.upstream = upstream
        self._keepalive = keepalive

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        return await self.keys.authenticate(authorization)

    async def start(self, body: bytes, authorization: str | None) -> bytes | Stream:
        key = await self.authenticate(authorization)
        request = parse_chat_request(body)
        self.catalog.resolve(request.model, key)
        response = await self.upstream.open_chat(body, stream=request.stream)
        if request.stream:
            return Stream(response, self._keepalive, self.upstream.secrets)
        try:
            answer = await response.aread()
        except httpx.TimeoutException as exc:
            raise timeout_error() from exc
        except httpx.HTTPError as exc:
            raise GatewayError(
                502, f"The upstream API answer broke off ({type(exc).__name__}).", "api_error"
            ) from exc
        finally:
            await response.aclose()
        if not answer.lstrip().startswith(b"{"):
            raise GatewayError(502, "The upstream API answered with something not JSON.")
        # An upstream that echoes our key (a debugging proxy, say) must not hand it out.
        return redact_bytes(answer)
