"""The upstream's answer on its way to the client: a whole JSON body (`read_answer`), a
`Stream` of SSE events, or a `Passthrough` of bytes as they come (audio), and the `Answer`
whose closing settles the request's account."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ..errors import GatewayError, scrub
from ..ops import observe
from ..redaction import StreamRedactor, redact_bytes
from ..upstream.client import finish, read_available
from ..upstream.timeouts import Deadlines
from .accounting import Account
from .sse import DONE, EventReader, is_error_event
from .usage_meter import UsageMeter

logger = logging.getLogger(__name__)

# A passed-through JSON answer read for its usage: a transcript with its segments and words
# takes a few MB at most, far less than this.
MAX_METERED_BYTES = 16 * 1024 * 1024
# The most of one stream event the gateway holds while it waits for the event's end: far
# above any real event (a chat chunk is under a KiB; a Response's last event holds the whole
# answer), and what keeps an upstream that never ends an event from growing the process.
MAX_EVENT_BYTES = 16 * 1024 * 1024


def shutting_down() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down; retry the request.", "api_error")


class _Reading:
    """What a Stream and a Passthrough share while they read the upstream's answer: one timer
    for the read being waited on (`waiting`), which the gateway's stop fires at once; a client
    gone counted as its choice, not a failure; a broken connection as the upstream's 502,
    `broke` saying what broke; and the response released however the reading ends."""

    def __init__(self, answer: Stream | Passthrough, broke: str) -> None:
        self._answer = answer
        self._broke = broke
        self._loop = asyncio.get_running_loop()
        self.waiting: asyncio.Timeout | None = None

    def _stop(self, _: object) -> None:
        # A timer that has just fired needs no firing (and may not be rescheduled).
        if self.waiting is not None and not self.waiting.expired():
            self.waiting.reschedule(self._loop.time())

    def __enter__(self) -> _Reading:
        # Failed unless it ends well (the reader says so) or its client leaves.
        self._answer.failed = True
        self._answer.stopping.add_done_callback(self._stop)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        try:
            if kind is not None and issubclass(kind, GeneratorExit | asyncio.CancelledError):
                self._answer.failed = False  # the client went away: its choice, not an error
            elif isinstance(error, aiohttp.ClientError):
                broke = GatewayError(
                    502, f"The upstream API {self._broke} ({type(error).__name__}).", "api_error"
                )
                raise observe.upstream_failed(broke) from error
        finally:
            self._answer.stopping.remove_done_callback(self._stop)
            self._answer.release()


class Stream:
    """An upstream SSE response, read as batches of event payloads."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        deadlines: Deadlines,
        *,
        keepalive: float,
        flush_interval: float,
        secrets: tuple[str, ...],
        stopping: asyncio.Future[None],
        meter: UsageMeter,
    ) -> None:
        self._response = response
        self._deadlines = deadlines
        self._keepalive = keepalive
        self._flush_interval = flush_interval
        self._secrets = secrets
        # Done when the gateway's drain time is up: the reading ends at once.
        self.stopping = stopping
        self._meter = meter
        # Whether it ended in an error (told to the client), not with [DONE] or a client gone.
        self.failed = False

    async def batches(self) -> AsyncGenerator[list[bytes], None]:
        """Yields the `data` payloads of each network read as one batch, or an empty batch
        after `keepalive` seconds of silence. The last batch of a complete stream ends with
        `[DONE]` (DONE) and is the only one that holds it; raises GatewayError when
        the upstream fails, ends early or stays silent too long, or the gateway stops, since
        the client must not mistake any of that for success.

        With a `flush_interval`, a batch is read no sooner than that long after the last one:
        what arrives meanwhile waits in the connection's buffer, unread, and goes out as one
        batch (the first batch, and the first after a quiet spell, go at once). Each batch is
        a wake-up here, a message to Envoy and a chunk to the client: the stream's main
        costs."""
        loop = asyncio.get_running_loop()
        reader = EventReader()
        redactor = StreamRedactor(self._secrets)
        content = self._response.content
        # A wait for the network is the stream's own task awaiting the read under one timer:
        # no task, future or callbacks per read (they cost more than the read). The gateway's
        # stop ends a wait by firing its timer at once.
        sent_at = -math.inf
        with _Reading(self, "stream broke") as reading:
            while True:
                if (gathered := sent_at + self._flush_interval) > loop.time():
                    try:
                        async with asyncio.timeout_at(gathered) as reading.waiting:
                            await content.wait_eof()  # the end need not wait
                    except (TimeoutError, aiohttp.ClientError):
                        pass  # a broken stream: read_available hands out what came first
                    finally:
                        reading.waiting = None
                    if self.stopping.done():
                        raise shutting_down()
                # What has arrived already is read without a timer; only an empty buffer
                # means waiting for the network.
                chunk = read_available(self._response)
                if not chunk and not content.at_eof():
                    due = self._deadlines.next_read(loop.time())
                    while True:
                        if self.stopping.done():
                            raise shutting_down()
                        try:
                            async with asyncio.timeout_at(
                                min(loop.time() + self._keepalive, due.at)
                            ) as reading.waiting:
                                chunk = await content.readany()
                            break
                        except TimeoutError:
                            if self.stopping.done():
                                raise shutting_down() from None
                            if loop.time() >= due.at:
                                raise observe.upstream_failed(due.error()) from None
                        finally:
                            reading.waiting = None
                        yield []
                if not chunk:
                    # An upstream that answers a stream with a JSON error (HTTP 200 all the
                    # same) said why: the client gets its message, not a guess.
                    if is_error_event(unended := reader.pending().strip()):
                        raise observe.upstream_failed(self._in_band_error(unended))
                    # One that ignores `stream` sends its whole completion: it goes out as the
                    # stream it would have been.
                    whole = completion_chunks(unended) if unended.startswith(b"{") else None
                    if whole is not None:
                        batch = [
                            redactor.feed(data) for data in whole if self._meter.see_chunk(data)
                        ]
                        if (held := redactor.flush()) is not None:
                            batch.append(held)
                        self.failed = False
                        yield [*batch, DONE]
                        return
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
                        self.failed = False
                        if (held := redactor.flush()) is not None:
                            batch.append(held)
                        # With the events before it: one message fewer to the client.
                        batch.append(DONE)
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
                    sent_at = loop.time()
                if reader.pending_size() > MAX_EVENT_BYTES:
                    endless = GatewayError(
                        502,
                        f"The upstream API sent a stream event of over {MAX_EVENT_BYTES:,} bytes.",
                        "api_error",
                    )
                    raise observe.upstream_failed(endless)

    def release(self) -> None:
        """Done with the upstream's response (again: nothing happens)."""
        finish(self._response)

    def _in_band_error(self, data: bytes) -> GatewayError:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            document = None
        return upstream_error(document, self._secrets, "The upstream API failed mid-stream")


def completion_chunks(answer: bytes) -> list[bytes] | None:
    """The stream of a whole chat completion (`"object": "chat.completion"`): one chunk with
    each choice's message as its delta, then one with the usage, as OpenAI would have streamed
    it; None for anything else."""
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("object") != "chat.completion":
        return None
    choices = document.get("choices")
    if not isinstance(choices, list):
        return None
    head = {name: document[name] for name in ("id", "created", "model") if name in document}
    head["object"] = "chat.completion.chunk"
    if "system_fingerprint" in document:
        head["system_fingerprint"] = document["system_fingerprint"]
    deltas = []
    for choice in choices:
        if not isinstance(choice, dict):
            choice = {}
        message = dict(choice.get("message") or {})
        calls = message.get("tool_calls")
        if isinstance(calls, list):  # a streamed call says which of the message's it is
            message["tool_calls"] = [
                {"index": index, **call} if isinstance(call, dict) else call
                for index, call in enumerate(calls)
            ]
        deltas.append(
            {
                "index": choice.get("index", 0),
                "delta": message,
                "logprobs": choice.get("logprobs"),
                "finish_reason": choice.get("finish_reason"),
            }
        )
    chunks = [orjson.dumps({**head, "choices": deltas})]
    if document.get("usage") is not None:
        chunks.append(orjson.dumps({**head, "choices": [], "usage": document["usage"]}))
    return chunks


def upstream_error(document: Any, secrets: tuple[str, ...], said: str) -> GatewayError:
    """The 502 for an error the upstream reported in its answer (`{"error": {"message"}}`):
    `said`, then its message, scrubbed of any form of the gateway's secrets."""
    error = document.get("error") if isinstance(document, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    text = scrub(message, secrets) if isinstance(message, str) else "unknown error"
    if text is None:
        text = "its message was withheld (it held a form of a credential)"
    return GatewayError(502, f"{said}: {text}", "api_error")


class Passthrough:
    """An upstream answer sent on as it comes, whatever it is (audio, text, events), with the
    upstream's Content-Type: nothing is read into it but for secrets in text, and a JSON
    answer's usage (a transcription's) once it is all through."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        deadlines: Deadlines,
        *,
        stopping: asyncio.Future[None],
        meter: UsageMeter,
    ) -> None:
        self._response = response
        self._deadlines = deadlines
        self.stopping = stopping
        self._meter = meter
        self.content_type = response.headers.get("content-type", "application/octet-stream")
        # Text may echo a key (a debugging proxy): each chunk of it is redacted. Audio is not.
        kind = self.content_type.partition(";")[0].strip().lower()
        self._text = kind.startswith("text/") or kind.endswith(("json", "xml"))
        # A JSON answer is kept (up to MAX_METERED_BYTES) to read its usage at the end.
        self._kept: bytearray | None = bytearray() if kind.endswith("json") else None
        self.failed = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The answer's bytes, each read as it arrives, bounded by the deadlines; raises
        GatewayError when the upstream fails or stays silent too long, or the gateway stops."""
        loop = asyncio.get_running_loop()
        content = self._response.content
        # As in Stream: the read waits under one timer, which the gateway's stop fires.
        with _Reading(self, "answer broke off") as reading:
            while True:
                if self.stopping.done():
                    raise shutting_down()
                chunk = read_available(self._response)
                if not chunk:
                    if content.at_eof():
                        break
                    due = self._deadlines.next_read(loop.time())
                    try:
                        async with asyncio.timeout_at(due.at) as reading.waiting:
                            chunk = await content.readany()
                    except TimeoutError:
                        if self.stopping.done():
                            raise shutting_down() from None
                        raise observe.upstream_failed(due.error()) from None
                    finally:
                        reading.waiting = None
                    if not chunk:
                        break
                self._deadlines.got_bytes()
                self._keep(chunk)
                yield redact_bytes(chunk) if self._text else chunk
            if self._kept is not None:
                self._meter.see_answer(bytes(self._kept))
            self.failed = False

    def _keep(self, chunk: bytes) -> None:
        if self._kept is None:
            return
        if len(self._kept) + len(chunk) > MAX_METERED_BYTES:
            # Its usage goes unread: the request counts as unmeasured, its cost unknown.
            logger.warning("a JSON answer passed through is over %d bytes", MAX_METERED_BYTES)
            self._kept = None
            return
        self._kept += chunk

    def release(self) -> None:
        finish(self._response)


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes | Stream | Passthrough
    account: Account

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """x-ratelimit-* headers, for the response's initial metadata."""
        return self.account.headers

    def close(self, *, failed: bool) -> None:
        """Settles the request, `failed` if its client got an error: counted with the
        upstream's usage if it arrived, else with the estimate of what was delivered (see
        `usage`). A stream is released whether or not it was read."""
        stream = self.body if isinstance(self.body, Stream | Passthrough) else None
        try:
            failed = failed or (stream is not None and stream.failed)
            self.account.settle(error=failed, usage=self.account.meter.usage())
        finally:
            if stream is not None:
                stream.release()


async def read_answer(
    response: aiohttp.ClientResponse, deadlines: Deadlines, *, limit: int
) -> bytes:
    """A whole non-streamed answer as the upstream sent it (see `checked_answer`), each read
    bounded by the deadlines; a 502 past `limit` bytes, which the gateway would hold whole."""
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
            if len(answer) > limit:
                # The request's doing (a huge batch of embeddings), not the upstream's fault.
                raise GatewayError(
                    502,
                    f"The upstream API's answer is over {limit:,} bytes, more than the gateway "
                    "holds for one answer (GATEWAY_MAX_ANSWER_BYTES); ask for less at a time.",
                    "api_error",
                )
    except aiohttp.ClientError as exc:
        broke = GatewayError(
            502, f"The upstream API answer broke off ({type(exc).__name__}).", "api_error"
        )
        raise observe.upstream_failed(broke) from exc
    finally:
        finish(response)
    return bytes(answer)


def checked_answer(answer: bytes, meter: UsageMeter, secrets: tuple[str, ...]) -> bytes:
    """What the client gets of a whole answer, once read for its usage: a 502 unless it is a
    JSON object, or when it is the upstream's error with HTTP 200 (an `error` object where the
    answer's `object` should be); the upstream's key nowhere in it. (CPU-bound: a large answer
    is given to the pipeline's large-body thread.)"""
    if not answer.lstrip().startswith(b"{"):
        not_json = GatewayError(502, "The upstream API answered with something not JSON.")
        raise observe.upstream_failed(not_json)
    document = meter.see_answer(answer)
    if (
        isinstance(document, dict)
        and isinstance(document.get("error"), dict)
        and "object" not in document
    ):
        raise observe.upstream_failed(upstream_error(document, secrets, "The upstream API failed"))
    # An upstream that echoes our key (a debugging proxy, say) must not hand it out.
    return redact_bytes(answer)
