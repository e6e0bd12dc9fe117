"""A scriptable OpenAI-compatible upstream served over real HTTP/1.1.

The gateway under test runs in another process and talks to this server with
httpx, so everything here goes through a genuine socket: keep-alive, chunked
streaming, clients that give up mid-response, and connection resets all behave
as they would against the real API.

    with FakeUpstream() as upstream:
        upstream.enqueue(Reply.json(429, headers={"Retry-After": "2"}))
        ...  # point the gateway at upstream.base_url
        assert upstream.last_request().json()["model"] == "gpt-4o-mini"

Only the standard library is used so the fake cannot share bugs with the
HTTP stack of the code it is testing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

__all__ = [
    "COMPLETION_TOKENS",
    "DEFAULT_CONTENT",
    "DEFAULT_MODEL",
    "DEFAULT_STREAM_PIECES",
    "DEFAULT_TOOL_ARGUMENTS",
    "DEFAULT_TOOL_CALL_ID",
    "EMBEDDING_DIMENSIONS",
    "MODELS",
    "PROMPT_TOKENS_PER_MESSAGE",
    "SPEECH_CHUNKS",
    "SYSTEM_FINGERPRINT",
    "TRANSCRIPT",
    "TRANSCRIPTION_SECONDS",
    "FakeUpstream",
    "RecordedRequest",
    "Reply",
    "embedding_vector",
    "make_chunk",
    "make_completion",
    "make_error",
    "make_models_list",
    "make_response",
    "make_response_events",
    "make_stream_chunks",
    "make_usage",
    "make_usage_chunk",
    "prompt_tokens_of_body",
]

DEFAULT_CONTENT = "Hello from the fake upstream!"
# How an upstream without the option answers a stream that asks for its usage.
STREAM_OPTIONS_REFUSED = {
    "error": {
        "message": "Unrecognized request argument supplied: stream_options",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
}
DEFAULT_STREAM_PIECES: tuple[str, ...] = ("Hello", " from", " the", " fake", " upstream!")
DEFAULT_TOOL_CALL_ID = "call_fake1"
DEFAULT_TOOL_ARGUMENTS = '{"location": "Paris"}'
# A tool a client would declare for the tool calls above.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}
# Split mid-token on purpose: clients must concatenate, not parse, each fragment.
_TOOL_ARGUMENT_PIECES: tuple[str, ...] = ('{"location"', ': "Par', 'is"}')
SYSTEM_FINGERPRINT = "fp_fake"
DEFAULT_MODEL = "gpt-4o-mini"
COMPLETION_TOKENS = 7
PROMPT_TOKENS_PER_MESSAGE = 5
BYTES_PER_TOKEN = 4
MODELS: tuple[tuple[str, int, str], ...] = (
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4o", 1715367049, "system"),
)

# Short enough that stop() and disconnect detection feel immediate, long
# enough that idle hangs do not burn CPU.
_POLL_INTERVAL = 0.05
_STOP_GRACE = 2.0
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# What api.openai.com sends; the charset parameter keeps clients honest about
# matching the media type rather than the whole header.
_STREAM_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
)

_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}

Event = dict[str, Any] | str | bytes


# --------------------------------------------------------------------------
# Payload builders, public so tests can script realistic custom replies.
# --------------------------------------------------------------------------


def make_error(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def make_usage(prompt_tokens: int, completion_tokens: int = COMPLETION_TOKENS) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def prompt_tokens_of_body(body: bytes) -> int:
    """The prompt a real tokenizer would see in a body, roughly: one token per 4 bytes of it,
    whatever field holds them (the usage reported when `FakeUpstream.usage_from_body`)."""
    return -(-len(body) // BYTES_PER_TOKEN)


def make_completion(
    content: str | None = DEFAULT_CONTENT,
    *,
    model: str = DEFAULT_MODEL,
    completion_id: str = "chatcmpl-fake",
    created: int | None = None,
    tool_name: str | None = None,
    prompt_tokens: int = PROMPT_TOKENS_PER_MESSAGE,
) -> dict[str, Any]:
    """A `chat.completion` object; with `tool_name` it is a tool call instead of text."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    finish_reason = "stop"
    if tool_name is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": DEFAULT_TOOL_CALL_ID,
                "type": "function",
                "function": {"name": tool_name, "arguments": DEFAULT_TOOL_ARGUMENTS},
            }
        ]
        finish_reason = "tool_calls"
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": make_usage(prompt_tokens),
    }


def make_chunk(
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    model: str = DEFAULT_MODEL,
    completion_id: str = "chatcmpl-fake",
    created: int | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One `chat.completion.chunk`.

    `include_usage` adds the `"usage": null` OpenAI puts on every regular chunk
    when the request asked for usage.
    """
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def make_usage_chunk(
    usage: dict[str, int],
    *,
    model: str = DEFAULT_MODEL,
    completion_id: str = "chatcmpl-fake",
    created: int | None = None,
) -> dict[str, Any]:
    """The trailing chunk sent for `stream_options.include_usage`: no choices, only totals."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
        "usage": usage,
    }


def make_stream_chunks(
    *,
    model: str = DEFAULT_MODEL,
    completion_id: str = "chatcmpl-fake",
    created: int | None = None,
    tool_name: str | None = None,
    include_usage: bool = False,
    prompt_tokens: int = PROMPT_TOKENS_PER_MESSAGE,
) -> list[dict[str, Any]]:
    """The chunks (without `[DONE]`) of the default streamed answer."""
    created = int(time.time()) if created is None else created

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return make_chunk(
            delta,
            finish_reason,
            model=model,
            completion_id=completion_id,
            created=created,
            include_usage=include_usage,
        )

    if tool_name is None:
        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": piece}) for piece in DEFAULT_STREAM_PIECES]
        chunks.append(chunk({}, "stop"))
    else:
        chunks = [
            chunk({"role": "assistant", "content": None}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": DEFAULT_TOOL_CALL_ID,
                            "type": "function",
                            "function": {"name": tool_name, "arguments": ""},
                        }
                    ]
                }
            ),
        ]
        chunks += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _TOOL_ARGUMENT_PIECES
        ]
        chunks.append(chunk({}, "tool_calls"))
    if include_usage:
        chunks.append(
            make_usage_chunk(
                make_usage(prompt_tokens), model=model, completion_id=completion_id, created=created
            )
        )
    return chunks


# --------------------------------------------------------------------------
# The other routes: embeddings, legacy completions, images, audio.
# --------------------------------------------------------------------------

EMBEDDING_DIMENSIONS = 8
TRANSCRIPT = "Hello from the fake transcription."
# The seconds of audio a whisper-1 transcription reports in its usage.
TRANSCRIPTION_SECONDS = 2.5
# The default speech: audio in a few chunks, sent apart so that a client can see it stream.
SPEECH_CHUNKS: tuple[bytes, ...] = (b"ID3\x04fake-audio-", b"\x00\xff" * 512, b"-end")
# A 1x1 PNG, for images asked as b64_json.
_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5f1ec3f0000000049454e44ae426082"
    )
).decode()
_AUDIO_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


def embedding_vector(index: int, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The fake's embedding of input `index`: exact float32 values (k/8), so that base64 and
    float answers carry the same numbers."""
    return [((index + k) % 16) / 8 - 1 for k in range(dimensions)]


def _inputs(value: Any) -> list[Any]:
    """An embeddings `input` as its items: one string or token list, or a list of them."""
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(item, int) for item in value)
    ):
        return [value]
    return list(value) if isinstance(value, list) else []


def _input_tokens(item: Any) -> int:
    if isinstance(item, str):
        return max(1, -(-len(item) // BYTES_PER_TOKEN))
    return len(item) if isinstance(item, list) else 0


def make_embeddings(payload: dict[str, Any]) -> dict[str, Any]:
    inputs = _inputs(payload.get("input"))
    dimensions = payload.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and dimensions > 0 else EMBEDDING_DIMENSIONS
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    for index in range(len(inputs)):
        vector = embedding_vector(index, size)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_input_tokens(item) for item in inputs)
    return {
        "object": "list",
        "data": data,
        "model": payload["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def make_text_completion(
    *, model: str, completion_id: str, prompt_tokens: int, created: int | None = None
) -> dict[str, Any]:
    """A legacy `text_completion`."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"text": DEFAULT_CONTENT, "index": 0, "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": make_usage(prompt_tokens),
    }


def make_text_completion_chunks(
    *, model: str, completion_id: str, prompt_tokens: int, include_usage: bool
) -> list[dict[str, Any]]:
    """A streamed legacy completion: one `text_completion` per piece, then the usage chunk
    when asked (no choices), as OpenAI streams it."""
    created = int(time.time())

    def chunk(text: str, finish_reason: str | None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
        }

    chunks = [chunk(piece, None) for piece in DEFAULT_STREAM_PIECES]
    chunks.append(chunk("", "stop"))
    if include_usage:
        usage = {**chunk("", None), "choices": [], "usage": make_usage(prompt_tokens)}
        chunks.append(usage)
    return chunks


def make_images(payload: dict[str, Any]) -> dict[str, Any]:
    count = payload.get("n")
    count = count if isinstance(count, int) and count > 0 else 1
    if payload.get("response_format") == "b64_json":
        item: dict[str, Any] = {"b64_json": _PNG}
    else:
        item = {"url": "https://images.example.com/fake.png"}
    item["revised_prompt"] = str(payload.get("prompt", ""))
    return {"created": int(time.time()), "data": [dict(item) for _ in range(count)]}


def form_fields(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of a multipart/form-data body by name, with the standard library's parser."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields.setdefault(name, payload)
    return fields


def make_models_list() -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(*model) for model in MODELS]}


def _model_object(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def _error_for_status(status: int) -> dict[str, Any]:
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None)
    error_type, code = _ERROR_TYPES.get(status, fallback)
    message = f"Scripted error from the fake upstream (HTTP {status})."
    return make_error(message, error_type, None, code)


# --------------------------------------------------------------------------
# Recorded requests and scripted replies
# --------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str  # as sent, query string included
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes  # exactly what arrived (de-chunked if the client used chunked encoding)

    def json(self) -> Any:
        return json.loads(self.body)


ReplyKind = Literal["json", "stream", "hang", "reset"]


@dataclass(frozen=True)
class Reply:
    """A scripted behaviour for one `POST /v1/chat/completions`; build it with the classmethods."""

    kind: ReplyKind
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # None means "whatever OpenAI would say": a completion for 2xx, an error object otherwise.
    body: bytes | None = None
    events: tuple[Event, ...] = ()
    delay: float = 0.0
    first_delay: float = 0.0
    done: bool = True
    clean_eof: bool = False
    seconds: float = 0.0

    @classmethod
    def json(
        cls,
        status: int = 200,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        delay: float = 0.0,
    ) -> Reply:
        """A complete response. `body`: bytes/str are sent verbatim, anything else as JSON.

        Omitting `body` gives an OpenAI-shaped default (a completion for 2xx,
        an error object otherwise). `delay` holds the response back, noticing
        a client that gives up in the meantime.
        """
        raw: bytes | None
        if body is None:
            raw = None
        elif isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = json.dumps(body).encode()
        return cls("json", status=status, headers=dict(headers or {}), body=raw, delay=delay)

    @classmethod
    def stream(
        cls,
        events: Iterable[Event],
        *,
        delay: float = 0.0,
        done: bool = True,
        headers: dict[str, str] | None = None,
        first_delay: float = 0.0,
        status: int = 200,
        clean_eof: bool = False,
    ) -> Reply:
        """A chunked SSE response.

        Dict events become `data: <json>\\n\\n`; str/bytes events go out
        verbatim, so tests can send comments or odd framing.

        `done=False` omits `data: [DONE]` and drops the connection without
        ending the chunked body, as a crashed upstream would. Add
        `clean_eof=True` to instead end the HTTP body properly, so only the
        `[DONE]` sentinel is missing.
        """
        return cls(
            "stream",
            status=status,
            headers=dict(headers or {}),
            events=tuple(events),
            delay=delay,
            first_delay=first_delay,
            done=done,
            clean_eof=clean_eof,
        )

    @classmethod
    def stream_then_break(
        cls,
        events: Iterable[Event],
        *,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
        first_delay: float = 0.0,
    ) -> Reply:
        return cls.stream(events, delay=delay, done=False, headers=headers, first_delay=first_delay)

    @classmethod
    def hang(cls, seconds: float = 3600) -> Reply:
        """Read the request, then say nothing.

        Holds the connection until `seconds` pass, the client leaves (counted
        in `disconnects`) or the server stops; then closes it unanswered.
        """
        return cls("hang", seconds=seconds)

    @classmethod
    def reset(cls) -> Reply:
        """Abort the connection with a TCP RST instead of answering."""
        return cls("reset")


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class FakeUpstream:
    """An OpenAI-compatible HTTP server on 127.0.0.1 with a scriptable reply queue."""

    # Seconds slept between chunks of the *default* streamed answer.
    chunk_delay: float = 0.0
    # Whether the default answer reports prompt_tokens_of_body(body) rather than
    # PROMPT_TOKENS_PER_MESSAGE per message: a count a client cannot shape.
    usage_from_body: bool = False

    def __init__(self) -> None:
        self.chunk_delay = 0.0
        self.usage_from_body = False
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._queue: deque[Reply] = deque()
        # (marker, reply): every request whose body holds the marker gets the reply.
        self._rules: list[tuple[bytes, Reply]] = []
        self._completions = 0
        self._disconnects = 0
        # Bumped by reset_state() so replies still playing for an earlier test
        # neither leak disconnects into the next one nor keep holding sockets.
        self._generation = 0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FakeUpstream is already running")
        server = _Server(self)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"fake-upstream-{server.server_address[1]}",
            daemon=True,
        )
        self._server = server
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        with self._cond:
            live = list(self._connections)
        for sock in live:
            # Unblocks handlers stuck reading an idle keep-alive socket or
            # writing to a client that stopped reading.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=_STOP_GRACE)
        with self._cond:
            self._cond.wait_for(lambda: not self._connections, timeout=_STOP_GRACE)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeUpstream is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting and inspection -----------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        with self._cond:
            self._queue.extend(replies)

    def when(self, marker: str, reply: Reply) -> None:
        """Every request whose body holds `marker` (a word of one client's prompt, say) gets
        `reply`, as often as it comes and before anything queued, while the others are
        answered as usual: one client's poison prompt among well-behaved traffic."""
        with self._cond:
            self._rules.append((marker.encode(), reply))

    def reset_rules(self) -> None:
        """Forget the rules `when` made; what is queued stays."""
        with self._cond:
            self._rules.clear()

    def reset_state(self) -> None:
        """Forget scripted replies and rules, recorded requests, counters, `chunk_delay` and
        `usage_from_body`.

        Hangs and slow streams still being played for earlier requests are cut
        short (the connection is closed, not counted as a disconnect).
        """
        with self._cond:
            self._queue.clear()
            self._rules.clear()
            self.requests.clear()
            self._completions = 0
            self._disconnects = 0
            self._generation += 1
            self.chunk_delay = 0.0
            self.usage_from_body = False

    @property
    def pending_replies(self) -> int:
        with self._cond:
            return len(self._queue)

    def last_request(self) -> RecordedRequest:
        with self._cond:
            if not self.requests:
                raise AssertionError("the fake upstream has not received any request")
            return self.requests[-1]

    @property
    def disconnects(self) -> int:
        """Clients that left while a reply was still being held back or written."""
        with self._cond:
            return self._disconnects

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._connections)

    def wait_for_disconnect(self, timeout: float, count: int = 1) -> bool:
        """True once `disconnects` reaches `count` (counted since the last reset_state)."""
        return self._wait_until(lambda: self._disconnects >= count, timeout)

    def wait_for_requests(self, count: int, timeout: float) -> bool:
        return self._wait_until(lambda: len(self.requests) >= count, timeout)

    def wait_for_open_connections(self, count: int, timeout: float) -> bool:
        """True once exactly `count` client connections are open (0: the client closed them all)."""
        return self._wait_until(lambda: len(self._connections) == count, timeout)

    def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout)

    # -- called from handler threads ---------------------------------------

    def _record(self, request: RecordedRequest) -> int:
        """Store `request`; returns the generation it belongs to."""
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()
            return self._generation

    def _is_current(self, generation: int) -> bool:
        with self._cond:
            return generation == self._generation

    def _next_reply(self, body: bytes) -> Reply | None:
        with self._cond:
            for marker, reply in self._rules:
                if marker in body:
                    return reply
            return self._queue.popleft() if self._queue else None

    def _next_completion_number(self) -> int:
        with self._cond:
            self._completions += 1
            return self._completions

    def _note_disconnect(self, generation: int) -> None:
        with self._cond:
            if generation == self._generation:
                self._disconnects += 1
                self._cond.notify_all()

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.add(sock)
            self._cond.notify_all()

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.discard(sock)
            self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 makes a burst of concurrent gateway
    # requests fail with connection resets that no real upstream would cause.
    request_queue_size = 1024

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can stall for seconds
        # on hosts with slow reverse DNS.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted on the accepting thread so open_connections is accurate as
        # soon as the client's connect() returns.
        self.upstream._connection_opened(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.upstream._connection_closed(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.upstream._connection_closed(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if self.stopping.is_set() or isinstance(exc, _CLIENT_GONE):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1.0"
    sys_version = ""
    server: _Server

    # -- plumbing ------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # Per-request access logs would drown pytest output.
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            # Raised while reading a request: the client dropped an idle
            # keep-alive connection or stop() tore the socket down. Neither is
            # a disconnect "during a reply", so nothing is counted.
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        self._gone_noted = False
        self._generation = -1
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        request = RecordedRequest(self.command, self.path, self._header_dict(), body)
        self._generation = self.server.upstream._record(request)
        try:
            self._route(request)
        except _CLIENT_GONE:
            self._client_gone()
        except OSError:
            if not self.server.stopping.is_set():
                raise
            self.close_connection = True

    def _read_body(self) -> bytes | None:
        """The request body, or None when the client vanished before sending all of it."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        body = self.rfile.read(length) if length > 0 else b""
        return body if len(body) == length else None

    def _read_chunked_body(self) -> bytes | None:
        parts: list[bytes] = []
        while True:
            size_line = self.rfile.readline(65537)
            if not size_line:
                return None
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # discard trailers
                return b"".join(parts)
            part = self.rfile.read(size)
            if len(part) < size:
                return None
            parts.append(part)
            self.rfile.readline()

    def _header_dict(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    # -- routing ---------------------------------------------------------------

    def _route(self, request: RecordedRequest) -> None:
        path = urlsplit(request.path).path
        default = self._DEFAULTS.get(path) if request.method == "POST" else None
        if default is not None:
            reply = self.server.upstream._next_reply(request.body)
            if reply is None:
                default(self, request)
            else:
                self._play(reply, request)
        elif request.method == "GET" and path == "/v1/models":
            self._send_json(200, make_models_list())
        elif request.method == "GET" and path.startswith("/v1/models/"):
            model_id = path.removeprefix("/v1/models/")
            for model in MODELS:
                if model[0] == model_id:
                    self._send_json(200, _model_object(*model))
                    return
            message = f"The model '{model_id}' does not exist"
            error = make_error(message, "invalid_request_error", "model", "model_not_found")
            self._send_json(404, error)
        else:
            # OpenAI's own wording for unknown routes.
            message = f"Invalid URL ({request.method} {path})"
            self._send_json(404, make_error(message))

    def _default_chat_completion(self, request: RecordedRequest) -> None:
        try:
            payload = json.loads(request.body)
        except ValueError:
            message = (
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)"
            )
            self._send_json(400, make_error(message))
            return
        if not isinstance(payload, dict):
            self._send_json(400, make_error("Invalid type for body: expected an object."))
            return
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            self._send_json(400, make_error("you must provide a model parameter", param="model"))
            return
        messages = payload.get("messages")
        if not isinstance(messages, list):
            message = "Missing required parameter: 'messages'."
            error = make_error(message, param="messages", code="missing_required_parameter")
            self._send_json(400, error)
            return

        number = self.server.upstream._next_completion_number()
        completion_id = f"chatcmpl-fake{number}"
        headers = {"x-request-id": f"req_fake{number}"}
        tool_name = _chosen_tool(payload)
        prompt_tokens = PROMPT_TOKENS_PER_MESSAGE * len(messages)
        if self.server.upstream.usage_from_body:
            prompt_tokens = prompt_tokens_of_body(request.body)
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            chunks = make_stream_chunks(
                model=model,
                completion_id=completion_id,
                tool_name=tool_name,
                include_usage=include_usage,
                prompt_tokens=prompt_tokens,
            )
            self._send_stream(
                200,
                headers,
                chunks,
                delay=self.server.upstream.chunk_delay,
                first_delay=0.0,
                done=True,
                clean_eof=True,
            )
        else:
            completion = make_completion(
                model=model,
                completion_id=completion_id,
                tool_name=tool_name,
                prompt_tokens=prompt_tokens,
            )
            self._send_json(200, completion, headers)

    def _default_response(self, request: RecordedRequest) -> None:
        """The native Responses API: a Response object, or its typed events."""
        try:
            payload = json.loads(request.body)
        except ValueError:
            self._send_json(400, make_error("We could not parse the JSON body of your request."))
            return
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str) or not model:
            self._send_json(400, make_error("Missing required parameter: 'model'.", param="model"))
            return
        number = self.server.upstream._next_completion_number()
        response = make_response(
            payload,
            response_id=f"resp_fake{number}",
            tool_name=_chosen_response_tool(payload),
            prompt_tokens=PROMPT_TOKENS_PER_MESSAGE * _input_count(payload),
        )
        headers = {"x-request-id": f"req_fake{number}"}
        if payload.get("stream") is True:
            events = [
                f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                for event in make_response_events(response)
            ]
            self._send_stream(
                200,
                headers,
                events,
                delay=self.server.upstream.chunk_delay,
                first_delay=0.0,
                done=False,  # the Responses API ends with response.completed, no [DONE]
                clean_eof=True,
            )
        else:
            self._send_json(200, response, headers)

    def _json_payload(self, request: RecordedRequest) -> dict[str, Any] | None:
        """The request's JSON object with a model, or None once the 400 is sent."""
        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            self._send_json(400, make_error("We could not parse the JSON body of your request."))
            return None
        if not isinstance(payload.get("model"), str):
            self._send_json(400, make_error("you must provide a model parameter", param="model"))
            return None
        return payload

    def _default_embeddings(self, request: RecordedRequest) -> None:
        payload = self._json_payload(request)
        if payload is None:
            return
        if not _inputs(payload.get("input")):
            error = make_error("'input' is a required property", param="input")
            self._send_json(400, error)
            return
        self._send_json(200, make_embeddings(payload))

    def _default_text_completion(self, request: RecordedRequest) -> None:
        payload = self._json_payload(request)
        if payload is None:
            return
        number = self.server.upstream._next_completion_number()
        prompt = payload.get("prompt")
        prompt_tokens = sum(_input_tokens(item) for item in _inputs(prompt)) or 1
        completion_id = f"cmpl-fake{number}"
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            chunks = make_text_completion_chunks(
                model=payload["model"],
                completion_id=completion_id,
                prompt_tokens=prompt_tokens,
                include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            )
            self._send_stream(
                200,
                {},
                chunks,
                delay=self.server.upstream.chunk_delay,
                first_delay=0.0,
                done=True,
                clean_eof=True,
            )
            return
        completion = make_text_completion(
            model=payload["model"], completion_id=completion_id, prompt_tokens=prompt_tokens
        )
        self._send_json(200, completion)

    def _default_images(self, request: RecordedRequest) -> None:
        payload = self._json_payload(request)
        if payload is not None:
            self._send_json(200, make_images(payload))

    def _default_speech(self, request: RecordedRequest) -> None:
        payload = self._json_payload(request)
        if payload is None:
            return
        audio_type = _AUDIO_TYPES.get(str(payload.get("response_format", "mp3")), "audio/mpeg")
        self.send_response(200)
        self.send_header("Content-Type", audio_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, chunk in enumerate(SPEECH_CHUNKS):
            delay = self.server.upstream.chunk_delay
            if index and delay > 0 and not self._hold(delay):
                self.close_connection = True
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _default_transcription(self, request: RecordedRequest) -> None:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            self._send_json(400, make_error("The body must be multipart/form-data."))
            return
        fields = form_fields(request.body, content_type)
        if "file" not in fields or "model" not in fields:
            self._send_json(400, make_error("'file' and 'model' are required"))
            return
        response_format = fields.get("response_format", b"json").decode()
        if response_format in ("text", "srt", "vtt"):
            self._send_bytes(
                200, TRANSCRIPT.encode(), {"Content-Type": "text/plain; charset=utf-8"}
            )
            return
        answer: dict[str, Any] = {"text": TRANSCRIPT}
        if response_format == "verbose_json":
            answer.update(language="english", duration=1.0, segments=[])
        elif fields["model"] == b"whisper-1":
            # As OpenAI's whisper-1 reports it: billed by the seconds of audio.
            answer["usage"] = {"type": "duration", "seconds": TRANSCRIPTION_SECONDS}
        else:
            answer["usage"] = {
                "type": "tokens",
                "input_tokens": 10,
                "output_tokens": 6,
                "total_tokens": 16,
            }
        self._send_json(200, answer)

    _DEFAULTS: ClassVar[dict[str, Callable[[_Handler, RecordedRequest], None]]] = {
        "/v1/chat/completions": lambda self, request: self._default_chat_completion(request),
        "/v1/responses": lambda self, request: self._default_response(request),
        "/v1/embeddings": lambda self, request: self._default_embeddings(request),
        "/v1/completions": lambda self, request: self._default_text_completion(request),
        "/v1/images/generations": lambda self, request: self._default_images(request),
        "/v1/audio/speech": lambda self, request: self._default_speech(request),
        "/v1/audio/transcriptions": lambda self, request: self._default_transcription(request),
    }

    def _play(self, reply: Reply, request: RecordedRequest) -> None:
        if reply.kind == "reset":
            self._reset_connection()
        elif reply.kind == "hang":
            self._hold(reply.seconds)
            self.close_connection = True
        elif reply.kind == "stream":
            self._send_stream(
                reply.status,
                reply.headers,
                reply.events,
                delay=reply.delay,
                first_delay=reply.first_delay,
                done=reply.done,
                clean_eof=reply.clean_eof,
            )
        else:
            if reply.delay > 0 and not self._hold(reply.delay):
                self.close_connection = True
                return
            body = reply.body
            if body is None:
                body = self._default_body(reply.status, request)
            self._send_bytes(reply.status, body, reply.headers)

    def _default_body(self, status: int, request: RecordedRequest) -> bytes:
        if status >= 400:
            return json.dumps(_error_for_status(status)).encode()
        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        model = payload.get("model")
        messages = payload.get("messages")
        message_count = len(messages) if isinstance(messages, list) else 1
        number = self.server.upstream._next_completion_number()
        completion = make_completion(
            model=model if isinstance(model, str) and model else DEFAULT_MODEL,
            completion_id=f"chatcmpl-fake{number}",
            tool_name=_chosen_tool(payload),
            prompt_tokens=PROMPT_TOKENS_PER_MESSAGE * message_count,
        )
        return json.dumps(completion).encode()

    # -- writing ---------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), headers or {})

    def _send_bytes(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        given = self._send_headers(headers, (("Content-Type", "application/json"),))
        if "content-length" not in given:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_stream(
        self,
        status: int,
        headers: dict[str, str],
        events: Sequence[Event],
        *,
        delay: float,
        first_delay: float,
        done: bool,
        clean_eof: bool,
    ) -> None:
        self.send_response(status)
        given = self._send_headers(headers, _STREAM_HEADERS)
        if "transfer-encoding" not in given:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        payloads = [_encode_event(event) for event in events]
        if done:
            payloads.append(b"data: [DONE]\n\n")
        for index, payload in enumerate(payloads):
            pause = first_delay if index == 0 else delay
            if pause > 0 and not self._hold(pause):
                self.close_connection = True
                return
            # A zero-length chunk would terminate the body early.
            if payload:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        if done or clean_eof:
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.close_connection = True

    def _send_headers(
        self, headers: dict[str, str], defaults: Iterable[tuple[str, str]]
    ) -> set[str]:
        """Send `headers` plus the `defaults` they don't override.

        Returns the lower-cased names of everything sent.
        """
        given = {name.lower() for name in headers}
        for name, value in defaults:
            if name.lower() not in given:
                self.send_header(name, value)
        for name, value in headers.items():
            self.send_header(name, value)
        return given | {name.lower() for name, _ in defaults}

    def _reset_connection(self) -> None:
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile (a makefile() wrapper) keeps the descriptor alive past
        # sock.close(); close it too so the RST goes out now, before
        # socketserver's shutdown(SHUT_WR) could send a polite FIN. wfile is a
        # plain writer without its own reference and must stay open because
        # the base class flushes it after every request.
        self.rfile.close()
        sock.close()

    # -- waiting while watching the client -------------------------------------

    def _hold(self, seconds: float) -> bool:
        """Sleep up to `seconds`.

        False as soon as the client disconnects, the server stops or
        reset_state() makes this request history.
        """
        deadline = time.monotonic() + seconds
        upstream = self.server.upstream
        while (remaining := deadline - time.monotonic()) > 0:
            if self.server.stopping.is_set() or not upstream._is_current(self._generation):
                self.close_connection = True
                return False
            if self._peer_closed(min(remaining, _POLL_INTERVAL)):
                self._client_gone()
                return False
        return True

    def _peer_closed(self, timeout: float) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if not readable:
                return False
            if self.connection.recv(1, socket.MSG_PEEK):
                # Extra bytes (a pipelined request) mean the peer is still
                # there; wait out the interval instead of spinning on select.
                self.server.stopping.wait(timeout)
                return False
            return True
        except (OSError, ValueError):
            return True

    def _client_gone(self) -> None:
        self.close_connection = True
        # stop() shutting sockets down looks like a disconnect from in here.
        if self._gone_noted or self.server.stopping.is_set():
            return
        self._gone_noted = True
        self.server.upstream._note_disconnect(self._generation)


def _chosen_tool(payload: dict[str, Any]) -> str | None:
    """The function the fake "decides" to call, or None for a text answer."""
    tools = payload.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    # A tool's result came back: the round trip ends in text, as a model's would.
    messages = payload.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "tool":
        return None
    choice = payload.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    first = tools[0]
    function = first.get("function") if isinstance(first, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else "unknown_function"


def _chosen_response_tool(payload: dict[str, Any]) -> str | None:
    """The function the fake calls in a Responses request, or None for a text answer."""
    tools = [tool for tool in payload.get("tools") or () if isinstance(tool, dict)]
    functions = [tool.get("name") for tool in tools if tool.get("type") == "function"]
    if not functions or payload.get("tool_choice") == "none":
        return None
    items = payload.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    if isinstance(last, dict) and last.get("type") == "function_call_output":
        return None
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return str(choice["name"])
    return str(functions[0] or "unknown_function")


def _input_count(payload: dict[str, Any]) -> int:
    items = payload.get("input")
    count = len(items) if isinstance(items, list) else 1
    return count + (1 if payload.get("instructions") else 0)


def make_response(
    request: dict[str, Any],
    *,
    response_id: str = "resp_fake",
    tool_name: str | None = None,
    prompt_tokens: int = PROMPT_TOKENS_PER_MESSAGE,
    text: str = DEFAULT_CONTENT,
) -> dict[str, Any]:
    """A `response` object as OpenAI's Responses API returns it (completed)."""
    if tool_name is None:
        item: dict[str, Any] = {
            "id": f"msg_{response_id}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
    else:
        item = {
            "id": f"fc_{response_id}",
            "type": "function_call",
            "status": "completed",
            "call_id": DEFAULT_TOOL_CALL_ID,
            "name": tool_name,
            "arguments": DEFAULT_TOOL_ARGUMENTS,
        }
    now = int(time.time())
    return {
        "id": response_id,
        "object": "response",
        "created_at": now,
        "status": "completed",
        "completed_at": now,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": [item],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": request.get("store", True) is not False,
        "temperature": request.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": COMPLETION_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + COMPLETION_TOKENS,
        },
        "metadata": request.get("metadata") or {},
    }


def make_response_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The typed events of a streamed `response` (text in DEFAULT_STREAM_PIECES-like pieces)."""
    started = {**response, "status": "in_progress", "output": [], "completed_at": None}
    started.pop("usage")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    item = response["output"][0]
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "message":
        text = item["content"][0]["text"]
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            }
        )
        events.append(
            {"type": "response.content_part.added", **where, "content_index": 0, "part": empty}
        )
        pieces = [text[index : index + 6] for index in range(0, len(text), 6)]
        events += [
            {
                "type": "response.output_text.delta",
                **where,
                "content_index": 0,
                "delta": piece,
                "logprobs": [],
            }
            for piece in pieces
        ]
        events.append(
            {
                "type": "response.output_text.done",
                **where,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            }
        )
        events.append(
            {
                "type": "response.content_part.done",
                **where,
                "content_index": 0,
                "part": item["content"][0],
            }
        )
    else:
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "arguments": ""},
            }
        )
        events += [
            {"type": "response.function_call_arguments.delta", **where, "delta": piece}
            for piece in _TOOL_ARGUMENT_PIECES
        ]
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **where,
                "name": item["name"],
                "arguments": item["arguments"],
            }
        )
    events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    events.append({"type": "response.completed", "response": response})
    return [{**event, "sequence_number": number} for number, event in enumerate(events)]


def _encode_event(event: Event) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode()
    return b"data: " + json.dumps(event).encode() + b"\n\n"
