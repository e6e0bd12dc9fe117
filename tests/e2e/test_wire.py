"""What the gateway does with requests that are legal on the wire but odd: HEAD, bytes that are
not UTF-8 in a path or in headers. Raw sockets and a raw HTTP/2 client, so that nothing between
the test and the gateway tidies the bytes up."""

from __future__ import annotations

import json
import re
import socket
import time

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from gateway_process import ADMIN_KEY, Gateway
from openai_shape import ERROR_KEYS

CHAT = "/v1/chat/completions"


def _connect(gw: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.http_port), timeout=15)


def _head_of_response(sock: socket.socket, within: float = 15.0) -> tuple[bytes, bytes]:
    """An HTTP/1.1 response's status line and headers, and whatever bytes came after them."""
    data = b""
    deadline = time.monotonic() + within
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _response(sock: socket.socket, within: float = 15.0) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length body: its head and its body."""
    head, body = _head_of_response(sock, within)
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert match is not None, head
    deadline = time.monotonic() + within
    while len(body) < int(match.group(1)) and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def _request(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: gateway", *headers, "", ""]).encode()


# --- HEAD ---------------------------------------------------------------------------------------

HEAD_CASES = [
    ("/v1/models", True),
    ("/v1/models", False),
    ("/v1/models/gpt-4o", True),
    (CHAT, True),
    ("/v1/admin/keys", False),
    ("/healthz", False),
    ("/no/such/path", True),
]


@pytest.mark.parametrize(("path", "with_key"), HEAD_CASES)
def test_head_answer_has_no_body_over_http1(gateway, api_key, path, with_key) -> None:
    key = [f"Authorization: Bearer {api_key}"] if with_key else []
    with _connect(gateway) as sock:
        sock.sendall(_request("HEAD", path, *key))
        head, after = _head_of_response(sock)
        assert head.startswith(b"HTTP/1.1 "), head
        # A body would be read as the start of the next response on this connection.
        sock.sendall(_request("GET", "/v1/models", f"Authorization: Bearer {api_key}"))
        next_head, body = _response(sock)
    assert not after, after
    assert next_head.startswith(b"HTTP/1.1 200 "), next_head
    assert json.loads(body)["object"] == "list"


def test_head_answer_has_no_body_over_http2(gateway, api_key) -> None:
    """h2 enforces that an answer to HEAD has no DATA: a body fails the stream."""
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    requests = {}
    for path, with_key in HEAD_CASES:
        stream_id = conn.get_next_available_stream_id()
        headers = [
            (":method", "HEAD"),
            (":scheme", "http"),
            (":authority", gateway.http_target),
            (":path", path),
        ]
        if with_key:
            headers.append(("authorization", f"Bearer {api_key}"))
        conn.send_headers(stream_id, headers, end_stream=True)
        requests[stream_id] = path
    ended: dict[int, str] = {}
    data: dict[int, int] = {}
    with _connect(gateway) as sock:
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 15
        while len(ended) < len(requests) and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[":status"]
                    if event.stream_ended is not None:
                        ended[event.stream_id] = status
                elif isinstance(event, h2.events.DataReceived):
                    data[event.stream_id] = data.get(event.stream_id, 0) + len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.setdefault(event.stream_id, "ended after data")
                elif isinstance(event, h2.events.StreamReset):
                    ended[event.stream_id] = f"reset {event.error_code!r}"
            sock.sendall(conn.data_to_send())
    assert not data, {requests[stream]: length for stream, length in data.items()}
    assert sorted(ended) == sorted(requests)
    assert all(status.isdigit() for status in ended.values()), ended


# --- bad UTF-8 in a path parameter --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "authorization"),
    [
        ("/v1/models/%ff", "client"),
        ("/v1/models/gpt%c3", "client"),
        ("/v1/admin/keys/%ff", "admin"),
        ("/v1/admin/keys/%ff", None),
        ("/v1/admin/keys/a%80b", "admin"),
    ],
)
def test_path_parameter_that_is_not_utf8_is_a_400(gateway, api_key, path, authorization) -> None:
    keys = {"client": api_key, "admin": ADMIN_KEY}
    headers = [f"Authorization: Bearer {keys[authorization]}"] if authorization else []
    with _connect(gateway) as sock:
        sock.sendall(_request("GET", path, *headers))
        head, body = _response(sock)
    error = json.loads(body)["error"]
    if authorization is None:  # the missing key is said first, as for any other path
        assert head.startswith(b"HTTP/1.1 401 "), (head, body)
        return
    assert head.startswith(b"HTTP/1.1 400 "), (head, body)
    assert set(error) == ERROR_KEYS and error["code"] == 400, error
    assert error["type"] == "invalid_request_error", error
    for internal in ("DecodeError", "protobuf", "typegpt.gateway", "Request", "class"):
        assert internal not in error["message"], error
    log = gateway.flushed_log()
    assert "DecodeError" not in log and "Traceback" not in log


# --- headers that are not UTF-8 -----------------------------------------------------------------

# 95 headers of 20 bytes from 0x80-0xFF each, as in the report: within Envoy's limits (100
# headers, 32 KiB), so the request reaches the backend.
ODD_HEADERS = [
    b"x-odd-%d: v%s" % (i, bytes(0x80 + (i + j) % 0x80 for j in range(20))) for i in range(95)
]


def _odd_request(path: str, authorization: bytes | None, request_id: str) -> bytes:
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    lines = [
        f"POST {path} HTTP/1.1".encode(),
        b"Host: gateway",
        b"Content-Type: application/json",
        f"X-Request-Id: {request_id}".encode(),
        *ODD_HEADERS,
        *([b"Authorization: " + authorization] if authorization is not None else []),
        b"Content-Length: %d" % len(body),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("path", [CHAT, "/v1/admin/keys"])
@pytest.mark.parametrize("key", ["none", "client", "admin"])
def test_a_request_with_bytes_that_are_not_utf8_makes_one_log_line(
    gateway, api_key, path, key
) -> None:
    secret = {"none": None, "client": api_key, "admin": ADMIN_KEY}[key]
    # A byte that is not UTF-8 in the middle of the key: both halves are secrets.
    halves = (secret[:20], secret[20:]) if secret else ()
    authorization = b"Bearer " + b"\xe9".join(half.encode() for half in halves) if secret else None
    request_id = f"odd-{key}-{path.rsplit('/', 1)[-1]}-{time.monotonic_ns()}"
    before = len(gateway.flushed_log())
    with _connect(gateway) as sock:
        sock.sendall(_odd_request(path, authorization, request_id))
        head, _ = _response(sock)
    assert re.match(rb"HTTP/1.1 40[13] ", head), head
    # The flush's own line (an admin call with a request id of its own) comes last.
    lines = gateway.flushed_log()[before:].splitlines()[:-1]
    for half in halves:
        assert half not in "\n".join(lines)
    assert len(lines) <= 1, f"{len(lines)} lines, first: {lines[0][:300]}"
    assert all(request_id in line for line in lines), lines


# --- request ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id",
    [
        "0190a6e2-7b1c-7d3e-8f00-123456789abc",  # a UUIDv7, as many clients make them
        "odd-client-completions-5419717083501",  # any 36 characters
    ],
)
def test_a_client_request_id_of_36_characters_comes_back_unchanged(
    gateway, api_key, request_id
) -> None:
    with _connect(gateway) as sock:
        sock.sendall(
            _request(
                "GET",
                "/v1/models",
                f"Authorization: Bearer {api_key}",
                f"X-Request-Id: {request_id}",
            )
        )
        head, _ = _response(sock)
    assert f"\r\nx-request-id: {request_id}\r\n".encode() in head + b"\r\n", head
    assert f'"request_id":"{request_id}"' in gateway.flushed_log()


def test_a_message_that_is_not_utf8_is_invalid_argument_on_the_grpc_port(gateway, api_key) -> None:
    # GetModelRequest{model: b"\xff"}, which no protobuf library would serialize.
    raw = b"\x0a\x01\xff"
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        get_model = channel.unary_unary("/typegpt.gateway.v1.ChatService/GetModel")
        with pytest.raises(grpc.RpcError) as excinfo:
            get_model(raw, metadata=[("authorization", f"Bearer {api_key}")], timeout=10)
    error = excinfo.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error  # type: ignore[attr-defined]
    trailers = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    assert json.loads(trailers["x-openai-error"])["error"]["code"] == 400
    assert "DecodeError" not in error.details()  # type: ignore[attr-defined]
