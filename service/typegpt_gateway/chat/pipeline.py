"""A chat completion's way through the gateway: auth → request rules → catalog → limits →
upstream.

`ChatPipeline.start` does everything that can still fail with a clean HTTP status; what it
returns is either the whole JSON answer or a `Stream` whose failures can only be reported in
band, as SSE error frames, with the rate-limit headers for either. Its caller owns that
`Answer` and closes it however the request ends, which settles the request's account: exactly
once, since closing again does nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
import orjson

from ..errors import GatewayError, scrub
from ..keystore.records import KeyRecord
from ..keystore.store import KeyCache
from ..ops import observe
from ..redaction import StreamRedactor, redact_bytes
from ..upstream.client import finish, read_available
from ..upstream.failover import Failover
from ..upstream.timeouts import Deadlines
from .accounting import Account, Accounting
from .catalog import Catalog
from .sse import DONE, EventReader, is_error_event
from .usage_meter import (
    UsageMeter,
    estimate_prompt_tokens,
    rejects_stream_options,
    with_include_usage,
    with_usage_option,
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    stream: bool
    # What the client asked of stream_options: None when it sent none.
    include_usage: bool | None = None
    # The prompt's estimate, for when the upstream's usage never comes.
    prompt_tokens: int = 0


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param)


JSON_TYPE = "application/json"


class _Repeated(dict[str, object]):
    """An object in which `key` came more than once."""

    key: str


def _path_to_repeat(document: object) -> str:
    """Where the outermost object that repeats a key is, as a `param` (`messages[0].role`)."""
    pending: list[tuple[str, object]] = [("", document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _Repeated):
            return f"{path}.{value.key}" if path else value.key
        if isinstance(value, dict):
            members = ((f"{path}.{key}" if path else key, v) for key, v in value.items())
        elif isinstance(value, list):
            members = ((f"{path}[{index}]", v) for index, v in enumerate(value))
        else:
            continue
        pending.extend(reversed(list(members)))
    raise AssertionError("unreachable: a repeat was marked")


def _marked(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object, marked (_Repeated) when it gives a key twice."""
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    marked = _Repeated(found)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    return marked


def _refuse_repeated_keys(body: bytes) -> None:
    """orjson keeps a repeated key's last value, an upstream may keep its first: the gateway
    would check (and estimate) one request and forward another. So a key given twice in any
    object is refused. orjson cannot tell, so the standard library parses the body again
    with a hook per object (not per byte): measured, 80-100 us more per 64 KiB prompt and
    about 40 ms per 32 MiB body. Screening the body for repeats without parsing it (counting
    each key's spelling, looking for escapes) cost more than that. The hook keeps no object:
    a second document of the body would double the memory a large body costs (one of
    500,000 small objects makes a document of 140 MB)."""
    repeated = False

    def check(pairs: list[tuple[str, object]]) -> None:
        nonlocal repeated
        if not repeated and len({key for key, _ in pairs}) != len(pairs):
            repeated = True

    try:
        json.loads(body, object_pairs_hook=check)
    except RecursionError:
        raise _invalid("The JSON body of your request is nested too deeply.") from None
    if repeated:
        # Only now is a document built whose objects say where the repeat is.
        param = _path_to_repeat(json.loads(body, object_pairs_hook=_marked))
        if len(param) > 100:
            param = param[:100] + "..."
        raise _invalid(
            f"Duplicate key '{param}' in the JSON body: each key may appear only once.", param
        )


def parse_chat_request(body: bytes, content_type: str = JSON_TYPE) -> ChatRequest:
    """The fields the gateway needs, or the 400 the client gets. The body itself is not changed.

    `content_type` is the client's Content-Type header ("" when it sent none)."""
    # OpenAI reads a body as its Content-Type says (a form-encoded one has no `model` to
    # it): a body labelled anything else than JSON is refused, not read as JSON here and
    # perhaps otherwise upstream. A charset parameter changes nothing: JSON is UTF-8.
    if content_type.partition(";")[0].strip().lower() not in ("", JSON_TYPE):
        raise _invalid(
            "Invalid Content-Type header: the body of a chat completion request must be JSON, "
            f"sent with Content-Type: {JSON_TYPE}."
        )
    try:
        # Strict RFC 8259 JSON, as the upstream may read it: UTF-8 without a BOM, no NaN or
        # Infinity, numbers within a double's range, no lone surrogates.
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(
            f"We could not parse the JSON body of your request ({exc}). The body must be "
            f"valid JSON in UTF-8 (Content-Type: {JSON_TYPE})."
        ) from None
    if not isinstance(document, dict):
        raise _invalid("The request body must be a JSON object.")
    _refuse_repeated_keys(body)
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
    include_usage = None
    if "stream_options" in document:
        options = document["stream_options"]
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(
        model=model,
        stream=bool(stream),
        include_usage=include_usage,
        prompt_tokens=estimate_prompt_tokens(document),
    )


def shutting_down() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down; retry the request.", "api_error")


class Stream:
    """An upstream SSE response, read as batches of event payloads."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        deadlines: Deadlines,
        *,
        keepalive: float,
        secrets: tuple[str, ...],
        stopping: asyncio.Future[None],
        meter: UsageMeter,
    ) -> None:
        self._response = response
        self._deadlines = deadlines
        self._keepalive = keepalive
        self._secrets = secrets
        self._stopping = stopping
        self._meter = meter
        # Whether it ended in an error (told to the client), not with [DONE] or a client gone.
        self.failed = False

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Yields the `data` payloads of each network read as one batch, or an empty batch
        after `keepalive` seconds of silence. Returns after `[DONE]`; raises GatewayError when
        the upstream fails, ends early or stays silent too long, or the gateway stops, since
        the client must not mistake any of that for success."""
        loop = asyncio.get_running_loop()
        reader = EventReader()
        redactor = StreamRedactor(self._secrets)
        content = self._response.content
        pending: asyncio.Future[bytes] | None = None
        failed = True
        try:
            while True:
                # What has arrived already is read without a task or a timer; only an empty
                # buffer means waiting for the network.
                chunk = read_available(self._response)
                if not chunk and not content.at_eof():
                    pending = asyncio.ensure_future(content.readany())
                    due = self._deadlines.next_read(loop.time())
                    while True:
                        silence = min(self._keepalive, due.at - loop.time())
                        done, _ = await asyncio.wait(
                            (pending, self._stopping),
                            timeout=max(silence, 0.0),
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if pending in done:
                            break
                        if self._stopping.done():
                            raise shutting_down()
                        if loop.time() >= due.at:
                            raise observe.upstream_failed(due.error())
                        yield []
                    chunk = pending.result()
                    pending = None
                if not chunk:
                    ended = GatewayError(
                        502,
                        "The upstream API ended the stream before it was complete.",
                        "api_error",
                    )
                    raise observe.upstream_failed(ended) from None
                self._deadlines.got_bytes()
                batch = []
                for data in reader.feed(chunk):
                    if data == DONE:
                        failed = False
                        if (held := redactor.flush()) is not None:
                            batch.append(held)
                        if batch:
                            yield batch
                        return
                    if is_error_event(data):
                        if batch:
                            yield batch
                        raise observe.upstream_failed(self._in_band_error(data))
                    if self._meter.see_chunk(data):
                        batch.append(redactor.feed(data))
                if batch:
                    yield batch
        except (GeneratorExit, asyncio.CancelledError):
            failed = False  # the client went away: its choice, not an error
            raise
        except aiohttp.ClientError as exc:
            broke = GatewayError(
                502, f"The upstream API stream broke ({type(exc).__name__}).", "api_error"
            )
            raise observe.upstream_failed(broke) from exc
        finally:
            self.failed = failed
            if pending is not None:
                pending.cancel()
                # A read that failed just as it was given up: not logged as never retrieved.
                if pending.done() and not pending.cancelled():
                    pending.exception()
            self.release()

    def release(self) -> None:
        """Done with the upstream's response (again: nothing happens)."""
        finish(self._response)

    def _in_band_error(self, data: bytes) -> GatewayError:
        try:
            error = orjson.loads(data)["error"]
            message = error.get("message") if isinstance(error, dict) else error
        except (orjson.JSONDecodeError, KeyError, AttributeError):
            message = None
        text = scrub(message, self._secrets) if isinstance(message, str) else "unknown error"
        if text is None:
            text = "its message was withheld (it held a form of a credential)"
        return GatewayError(502, f"The upstream API failed mid-stream: {text}", "api_error")


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes | Stream
    account: Account

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """x-ratelimit-* headers, for the response's initial metadata."""
        return self.account.headers

    def close(self, *, failed: bool) -> None:
        """Settles the request, `failed` if its client got an error: counted with the
        upstream's usage if it arrived, else with the estimate of what was delivered (see
        `usage`). A stream is released whether or not it was read."""
        stream = self.body if isinstance(self.body, Stream) else None
        try:
            failed = failed or (stream is not None and stream.failed)
            self.account.settle(error=failed, usage=self.account.meter.usage())
        finally:
            if stream is not None:
                stream.release()


async def read_answer(response: aiohttp.ClientResponse, deadlines: Deadlines) -> bytes:
    """A whole non-streamed answer, each read bounded by the deadlines."""
    loop = asyncio.get_running_loop()
    answer = bytearray()
    content = response.content
    try:
        while True:
            # Often the whole answer came with the headers: no wait, no timer.
            chunk = read_available(response)
            if not chunk:
                if content.at_eof():
                    break
                due = deadlines.next_read(loop.time())
                try:
                    async with asyncio.timeout_at(due.at):
                        chunk = await content.readany()
                except TimeoutError:
                    raise observe.upstream_failed(due.error()) from None
                if not chunk:
                    break
            answer += chunk
            deadlines.got_bytes()
    except aiohttp.ClientError as exc:
        broke = GatewayError(
            502, f"The upstream API answer broke off ({type(exc).__name__}).", "api_error"
        )
        raise observe.upstream_failed(broke) from exc
    finally:
        finish(response)
    if not answer.lstrip().startswith(b"{"):
        not_json = GatewayError(502, "The upstream API answered with something not JSON.")
        raise observe.upstream_failed(not_json)
    # An upstream that echoes our key (a debugging proxy, say) must not hand it out.
    return redact_bytes(bytes(answer))


# A body this large is read on a thread of its own, one such body at a time. Reading 16 MiB of
# small objects takes the CPU for most of a second: on the event loop that would stall every
# other client for as long; on the thread, the loop gets the interpreter back at every switch
# interval, and a client that sends many such bodies waits for its own turn.
LARGE_BODY_BYTES = 256 * 1024


class ChatPipeline:
    def __init__(
        self,
        keys: KeyCache,
        catalog: Catalog,
        upstreams: Failover,
        accounting: Accounting,
        *,
        keepalive: float,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.upstreams = upstreams
        self.accounting = accounting
        self._keepalive = keepalive
        # Done when the gateway's drain time is up: open streams end with an error frame.
        self.stopping: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._large_bodies = ThreadPoolExecutor(1, thread_name_prefix="large-bodies")

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        return await self.keys.authenticate(authorization)

    async def start(
        self, body: bytes, authorization: str | None, content_type: str = JSON_TYPE
    ) -> Answer:
        """The answer, which the caller must close (see `Answer.close`), or the error the
        client gets; an error after the request was admitted has settled it."""
        exchange = observe.current()
        key = await self.authenticate(authorization)
        exchange.key = key.name
        request = await self._parse(body, content_type)
        exchange.asked_for(request.model, known=request.model in self.catalog)
        exchange.stream = request.stream
        self.catalog.resolve(request.model, key)
        # A stream reports usage only if asked: the gateway asks whenever the client did not,
        # so that no client can choose the estimate over the upstream's count.
        ask_usage = request.stream and request.include_usage is not True
        meter = UsageMeter(request.prompt_tokens, strip_usage_chunk=ask_usage)
        account = await self.accounting.admit(key, request.model, meter)
        # Whatever raises from here on, the account is settled before it leaves.
        try:
            deadlines = self.upstreams.deadlines()
            response = await self._open(request, body, ask_usage, meter, deadlines)
            if request.stream:
                stream = Stream(
                    response,
                    deadlines,
                    keepalive=self._keepalive,
                    secrets=self.upstreams.secrets,
                    stopping=self.stopping,
                    meter=meter,
                )
                return Answer(stream, account)
            answer = await read_answer(response, deadlines)
            meter.see_answer(answer)
            return Answer(answer, account)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            # A client gone while waiting is counted with its prompt, which the upstream got.
            account.settle(error=not cancelled, usage=meter.usage() if cancelled else None)
            if isinstance(exc, GatewayError):
                headers = (*exc.headers, *account.headers)
                raise dataclasses.replace(exc, headers=headers) from exc
            raise

    async def _parse(self, body: bytes, content_type: str) -> ChatRequest:
        if len(body) < LARGE_BODY_BYTES:
            return parse_chat_request(body, content_type)
        return await asyncio.get_running_loop().run_in_executor(
            self._large_bodies, parse_chat_request, body, content_type
        )

    async def _open(
        self,
        request: ChatRequest,
        body: bytes,
        ask_usage: bool,
        meter: UsageMeter,
        deadlines: Deadlines,
    ) -> aiohttp.ClientResponse:
        if not ask_usage:
            return await self.upstreams.open(
                request.model, body, stream=request.stream, deadlines=deadlines
            )
        if request.include_usage is None:
            asking: bytes | None = with_include_usage(body)
        else:
            asking = with_usage_option(body)
        if asking is not None:
            try:
                return await self.upstreams.open(
                    request.model, asking, stream=True, deadlines=deadlines
                )
            except GatewayError as error:
                if not rejects_stream_options(error):
                    raise
            # An upstream without stream_options: the client's own bytes, usage estimated.
            meter.stop_stripping()
        return await self.upstreams.open(request.model, body, stream=True, deadlines=deadlines)
