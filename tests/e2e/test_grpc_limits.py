"""The gRPC port against callers that never finish: a call is refused on its headers when it
has no key, must deliver its request message within the request timeout, and a connection may
hold only so many streams. Envoy's port carries native gRPC to the same server, so the key
check holds there too, while Envoy itself opens more connections when it needs more streams.

A raw HTTP/2 client (the h2 package) sends what no well-behaved gRPC client would: a message
announced at 30 MiB of which only 1 KiB ever comes.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from fake_upstream import Reply, make_chunk
from gateway_process import ADMIN_KEY, Gateway
from openai_shape import chat_body

from typegpt_gateway.api import admin_auth
from typegpt_gateway.api.call_guard import message_timeout_error
from typegpt_gateway.keystore.records import missing_key_error

CHAT_HTTP = "/typegpt.gateway.v1.ChatService/CreateChatCompletionHttp"
LIST_MODELS = "/typegpt.gateway.v1.ChatService/ListModels"
CREATE_KEY = "/typegpt.gateway.v1.KeyService/CreateKey"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
ANNOUNCED = 30 * 1024 * 1024
SENT = 1024
GARBAGE_KEY = (("authorization", "Bearer sk-not-a-key"),)
BODY_TIMEOUT = 2


class RawGrpc:
    """One HTTP/2 connection speaking just enough gRPC to start calls and read their ends."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.ends: dict[int, dict[str, str] | str] = {}
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def start(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> int:
        """A call whose request message is announced at ANNOUNCED bytes, of which SENT come."""
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "gateway"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        self.conn.send_headers(stream, headers)
        self.conn.send_data(stream, struct.pack(">BI", 0, ANNOUNCED) + b"\0" * SENT)
        self._flush()
        return stream

    def end(self, stream: int, within: float) -> dict[str, str] | str | None:
        """The call's last headers (with grpc-status), "reset: <code>" if the server reset it,
        or None if neither came within `within` seconds."""
        deadline = time.monotonic() + within
        self.sock.settimeout(0.2)
        while stream not in self.ends and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    headers = dict(event.headers)
                    if "grpc-status" in headers:
                        self.ends[event.stream_id] = headers
                elif isinstance(event, h2.events.StreamReset):
                    self.ends.setdefault(
                        event.stream_id, f"reset: {h2.errors.ErrorCodes(event.error_code).name}"
                    )
            self._flush()
        return self.ends.get(stream)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(request: pytest.FixtureRequest):
    opened: list[RawGrpc] = []

    def connect(port: int) -> RawGrpc:
        opened.append(RawGrpc(port))
        return opened[-1]

    yield connect
    for connection in opened:
        connection.close()


def _port(gw: Gateway, through: str) -> int:
    return gw.grpc_port if through == "grpc" else gw.http_port


def _assert_error(end: dict[str, str] | str | None, expected_json: str, grpc_status: int) -> None:
    assert isinstance(end, dict), f"the call did not end in time: {end!r}"
    assert end["grpc-status"] == str(grpc_status), end
    assert json.loads(end["x-openai-error"]) == json.loads(expected_json)
    assert end["x-http-status"] == str(json.loads(expected_json)["error"]["code"])


@pytest.mark.parametrize("through", ["grpc", "envoy"])
@pytest.mark.parametrize(
    ("method", "answer"),
    [
        (CHAT_HTTP, missing_key_error),
        (LIST_MODELS, missing_key_error),
        (CREATE_KEY, lambda: admin_auth.missing_key_error(ADMIN_KEY)),
    ],
    ids=["chat", "models", "admin"],
)
def test_call_without_a_key_is_refused_before_its_message(
    gateway, raw, through, method, answer
) -> None:
    connection = raw(_port(gateway, through))
    for metadata in ((), (("authorization", "Basic dXNlcjpwYXNz"),)):
        stream = connection.start(method, (("x-request-id", "grpc-no-key"), *metadata))
        end = connection.end(stream, within=10)
        expected = answer()
        _assert_error(end, expected.to_json(), expected.grpc_code.value[0])
        assert end["x-request-id"] == "grpc-no-key"


def test_admin_off_is_said_before_the_message(make_gateway, raw) -> None:
    gw = make_gateway(admin_key=None).start()
    connection = raw(gw.grpc_port)
    end = connection.end(connection.start(CREATE_KEY), within=10)
    expected = admin_auth.missing_key_error(None)
    _assert_error(end, expected.to_json(), expected.grpc_code.value[0])


@pytest.fixture(scope="module")
def slow_body_gateway(upstream, tmp_path_factory):
    gw = Gateway(
        tmp_path_factory.mktemp("grpc-limits"),
        upstream.base_url,
        extra_env={
            "GATEWAY_REQUEST_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "GATEWAY_GRPC_MAX_CONCURRENT_STREAMS": "3",
        },
    ).start()
    yield gw
    gw.stop()


@pytest.mark.parametrize(
    ("method", "metadata"),
    [(CHAT_HTTP, GARBAGE_KEY), (CREATE_KEY, GARBAGE_KEY), (HEALTH_CHECK, ())],
    ids=["chat", "admin", "health"],
)
def test_message_must_arrive_within_the_request_timeout(
    slow_body_gateway, raw, method, metadata
) -> None:
    connection = raw(slow_body_gateway.grpc_port)
    started = time.monotonic()
    end = connection.end(connection.start(method, metadata), within=BODY_TIMEOUT + 10)
    elapsed = time.monotonic() - started
    expected = message_timeout_error()
    _assert_error(end, expected.to_json(), expected.grpc_code.value[0])
    assert BODY_TIMEOUT * 0.8 <= elapsed < BODY_TIMEOUT + 10


def test_streams_per_connection_are_capped(slow_body_gateway, raw) -> None:
    connection = raw(slow_body_gateway.grpc_port)
    # Opened at once, before the server's SETTINGS are read: the server itself must refuse.
    streams = [connection.start(CHAT_HTTP, GARBAGE_KEY) for _ in range(4)]
    # ENHANCE_YOUR_CALM while the client has not acknowledged the limit, REFUSED_STREAM after.
    refused = connection.end(streams[-1], within=10)
    assert refused in ("reset: ENHANCE_YOUR_CALM", "reset: REFUSED_STREAM"), refused
    assert connection.conn.remote_settings.max_concurrent_streams == 3
    # The three others are served (and end by the message timeout).
    for stream in streams[:3]:
        end = connection.end(stream, within=BODY_TIMEOUT + 10)
        assert isinstance(end, dict) and end["x-http-status"] == "408", end


def test_envoy_opens_more_connections_than_one_connection_has_streams(
    slow_body_gateway, upstream
) -> None:
    key = slow_body_gateway.create_key("many-streams")
    slow_body_gateway.wait_for_key(key)
    # Each answer starts at once, then takes 5 s: six at once need two connections.
    events = [make_chunk({"content": str(i)}) for i in range(6)]
    upstream.enqueue(*(Reply.stream(events, delay=1.0) for _ in range(6)))
    with httpx.Client(timeout=10) as client, ExitStack() as open_streams:
        for _ in range(6):
            response = open_streams.enter_context(
                client.stream(
                    "POST",
                    f"{slow_body_gateway.url}/v1/chat/completions",
                    json=chat_body(stream=True),
                    headers={"authorization": f"Bearer {key}"},
                )
            )
            assert response.status_code == 200
            assert next(response.iter_raw()).startswith(b"data: ")


def test_a_burst_through_envoy_is_never_refused_by_the_cap(slow_body_gateway) -> None:
    # 600 requests, 60 at a time, over a backend that takes 3 streams per connection: Envoy
    # must keep to the cap from each new connection's first frame, and the backend must not
    # count streams that Envoy already saw end. Unknown keys: answered at once, 403.
    headers = {"authorization": "Bearer sk-not-a-key"}
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=60)) as client:

        def one(_: int) -> int:
            return client.get(f"{slow_body_gateway.url}/v1/models", headers=headers).status_code

        with ThreadPoolExecutor(60) as pool:
            statuses = Counter(pool.map(one, range(600)))
    assert statuses == {403: 600}
