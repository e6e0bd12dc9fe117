"""Envoy's edge, hardened: slow clients, size limits, connection limits, banners, gRPC control
headers from HTTP clients, CORS, and an admin interface reachable from loopback only.

A dedicated gateway runs with short client timeouts and a CORS origin so that each limit can be
hit quickly; everything is real (Envoy, the gRPC server, the fake upstream) and on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from fake_upstream import Reply, make_chunk
from gateway_process import ADMIN_KEY, Gateway, bare_envoy, running
from openai_shape import assert_error, chat_body, sse_payloads

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc
from typegpt_gateway.errors import default_error_type, grpc_code_for
from typegpt_gateway.keystore.records import bearer_token
from typegpt_gateway.process.envoy_config import (
    ADMIN_BODY_BYTES,
    ERROR_STATUSES,
)

CHAT = "/v1/chat/completions"
ALLOWED_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "http://localhost:3000"
EVIL_ORIGIN = "https://evil.example.net"
HEADERS_TIMEOUT = 1
BODY_TIMEOUT = 2


@pytest.fixture(scope="module")
def edge(upstream, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    with running(
        tmp_path_factory.mktemp("edge"),
        upstream.base_url,
        extra_env={
            "GATEWAY_REQUEST_HEADERS_TIMEOUT": str(HEADERS_TIMEOUT),
            "GATEWAY_REQUEST_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "GATEWAY_CORS_ORIGINS": f"{ALLOWED_ORIGIN}, {OTHER_ORIGIN}",
        },
    ) as gw:
        yield gw, gw.create_key("edge-client")


def _raw(gw: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.http_port), timeout=15)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 15 s pass)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _http_error_body(raw: bytes, status: int) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), raw[:200]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == status and set(error) == {"message", "type", "param", "code"}
    return error


# --- slow clients ------------------------------------------------------------------------------


def test_slow_headers_are_cut(edge) -> None:
    gw, _ = edge
    with _raw(gw) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")  # never finished
        _read_all(sock)
        elapsed = time.monotonic() - started
    assert HEADERS_TIMEOUT * 0.8 <= elapsed < HEADERS_TIMEOUT + 10


def test_slow_body_is_408_in_the_error_shape(edge) -> None:
    gw, key = edge
    with _raw(gw) as sock:
        started = time.monotonic()
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"model": "gpt-4o"'
        )
        raw = _read_all(sock)
        elapsed = time.monotonic() - started
    error = _http_error_body(raw, 408)
    assert error["type"] == "timeout_error"
    assert BODY_TIMEOUT * 0.8 <= elapsed < BODY_TIMEOUT + 10


def test_request_timeout_never_cuts_a_slow_answer_or_a_long_stream(edge, upstream) -> None:
    gw, key = edge
    headers = {"authorization": f"Bearer {key}"}
    events = [make_chunk({"content": str(i)}) for i in range(4)]
    upstream.enqueue(Reply.stream(events, delay=1.0))  # 4 s, twice the request timeout
    started = time.monotonic()
    response = httpx.post(
        f"{gw.url}{CHAT}", json=chat_body(stream=True), headers=headers, timeout=30
    )
    assert time.monotonic() - started > BODY_TIMEOUT + 1
    assert response.status_code == 200
    assert sse_payloads(response.text)[-1] == "[DONE]"

    upstream.enqueue(Reply.json(200, delay=BODY_TIMEOUT + 1.5))
    response = httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def test_client_cannot_set_envoy_timeouts_that_cut_a_stream(gateway, api_key, upstream) -> None:
    events = [make_chunk({"content": str(i)}) for i in range(3)]
    upstream.enqueue(Reply.stream(events, delay=0.5))
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=chat_body(stream=True),
        headers={
            "authorization": f"Bearer {api_key}",
            "x-envoy-upstream-rq-timeout-ms": "200",
            "x-envoy-upstream-rq-per-try-timeout-ms": "200",
            "x-envoy-expected-rq-timeout-ms": "200",
            "x-forwarded-for": "10.0.0.1",
            "x-envoy-internal": "true",
        },
        timeout=30,
    )
    assert response.status_code == 200
    assert sse_payloads(response.text)[-1] == "[DONE]"


# --- sizes ---------------------------------------------------------------------------------------


def test_oversized_headers_are_431_in_the_error_shape(gateway) -> None:
    response = httpx.get(f"{gateway.url}/v1/models", headers={"x-big": "a" * 40_000})
    assert_error(response, 431, "invalid_request_error")
    many = {f"x-h{i}": "1" for i in range(120)}
    assert_error(httpx.get(f"{gateway.url}/v1/models", headers=many), 431)
    # Just within the limit, the request reaches the backend and is served (gRPC's own 8 KiB
    # metadata limit would make it a misleading 429).
    assert httpx.get(f"{gateway.url}/healthz", headers={"x-big": "a" * 30_000}).status_code == 200


def test_an_error_quoting_bytes_that_are_not_utf8_is_still_utf8(gateway) -> None:
    # The transcoder quotes the bad bytes of a typed (admin) body in its parse error.
    response = httpx.post(
        f"{gateway.url}/v1/admin/keys",
        content=b'{"name": "ok\x86\xed\xa0\x80\xf0\x9f\x98\x80"}',
        headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = json.loads(response.content.decode("utf-8"))["error"]  # strict: no stray bytes
    assert error["code"] == 400 and "\ufffd" in error["message"], error


def test_headers_grpc_metadata_cannot_carry_are_dropped_not_fatal(gateway, api_key) -> None:
    # Legal HTTP header names that are not gRPC metadata keys: the backend would refuse the
    # whole call (a 500) if they got through.
    for name in ("x_forwarded_user", "x-a'b", "x!", "x#y", "x`y", "x|y", "x~y"):
        response = httpx.get(
            f"{gateway.url}/v1/models",
            headers={"authorization": f"Bearer {api_key}", name: "v"},
        )
        assert response.status_code == 200, (name, response.text)


# --- requests without a key -----------------------------------------------------------------------

# Announced but never sent in full: 32 MiB less a little, within the body limit.
ANNOUNCED_BODY = 33_554_000
UNFINISHED_BODY = 30 * 1024 * 1024
# How long Envoy may take to free what it read ahead of refused uploads.
HELD_MEMORY_WAIT = 15.0


def _missing_key_answer(gw: Gateway) -> dict:
    """The backend's own answer to a call without a key, asked on its gRPC port."""
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.ListModels(chat_pb2.ListModelsRequest(), timeout=10)
    trailers = dict(excinfo.value.trailing_metadata())  # type: ignore[attr-defined]
    return json.loads(trailers["x-openai-error"])


def _upload_head(path: str, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: gateway",
        "Content-Type: application/json",
        f"Content-Length: {ANNOUNCED_BODY}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket, within: float) -> bytes:
    """One HTTP/1.1 response with a Content-Length body, or what came before `within` s."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within
    data = b""
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if match and len(body) >= int(match.group(1)):
                return data
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_request_without_a_key_is_refused_on_its_headers(gateway) -> None:
    expected = _missing_key_answer(gateway)
    with _raw(gateway) as sock:
        sock.sendall(_upload_head(CHAT, "x-request-id: no-key-1") + b"{" + b" " * 1023)
        raw = _read_response(sock, within=10)
        # Answered with 1 KiB of the 32 MiB sent: nothing waited for the body.
        assert raw, "no answer before the body was complete"
        error = _http_error_body(raw, 401)
        assert {"error": error} == expected
        head = raw.partition(b"\r\n\r\n")[0].decode().lower()
        assert "x-request-id: no-key-1" in head
        # Envoy cannot read past a body it refused: it closes the connection.
        assert "connection: close" in head
        assert _read_all(sock) == b""


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gpt-4o"),
        ("POST", CHAT),
        ("GET", "/no/such/path"),
    ],
)
def test_every_route_but_health_needs_a_key(gateway, method, path) -> None:
    expected = _missing_key_answer(gateway)
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer"}):
        response = httpx.request(method, f"{gateway.url}{path}", headers=headers)
        assert response.status_code == 401 and response.json() == expected, response.text
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{gateway.url}{path}").status_code == 200


def _envoy_admin(gw: Gateway, path: str, **params: str) -> httpx.Response:
    """Envoy's admin interface, at the address Envoy wrote to the file its command line names."""
    args = Path(f"/proc/{_envoy_pid(gw)}/cmdline").read_text().split("\0")
    address = Path(args[args.index("--admin-address-path") + 1]).read_text().strip()
    return httpx.get(f"http://{address}{path}", params=params, timeout=10)


def _envoy_stat(gw: Gateway, name: str) -> int:
    text = _envoy_admin(gw, "/stats", filter=f"^{re.escape(name)}$").text
    ((stat, value),) = [line.split(": ") for line in text.splitlines()]
    assert stat == name
    return int(value)


def _backend_requests(gw: Gateway) -> int:
    return _envoy_stat(gw, "cluster.grpc_backend.upstream_rq_total")


# Authorization values and whether keys.bearer_token takes a key from them. Each is sent raw
# (HTTP/1.1 as the bytes say); Envoy must refuse exactly the ones the backend would call
# missing, and pass every other to the backend (which answers 403 for these unknown keys).
AUTHORIZATIONS = [
    b"Bearer sk-unknown",
    b"bearer sk-unknown",
    b"BEARER sk-unknown",
    b"Bearer    sk-unknown   ",
    b"Bearer\tsk-unknown",
    b"Bearer \x1fsk-unknown",
    b"Bearer sk-\xc3\xa9",
    b"Bearer\xc2\xa0sk-unknown",
    b"Bearer",
    b"Bearer ",
    b"Bearer sk-a sk-b",
    b"Bearersk-unknown",
    b"Basic dXNlcjpwYXNz",
    b"sk-unknown",
    b"",
]


@pytest.mark.parametrize("value", AUTHORIZATIONS, ids=repr)
def test_envoy_refuses_exactly_the_headers_the_backend_calls_missing(gateway, value) -> None:
    before = _backend_requests(gateway)
    with _raw(gateway) as sock:
        sock.sendall(
            b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: "
            + value
            + b"\r\nConnection: close\r\n\r\n"
        )
        raw = _read_response(sock, within=10)
    status = int(raw.split(b" ", 2)[1])
    if status == 400:
        return  # a header value Envoy's codec refuses: it reaches neither
    forwarded = _backend_requests(gateway) > before
    decoded = value.decode("utf-8", "replace").strip(" \t")
    if bearer_token(decoded) is None:
        assert status == 401
        assert not forwarded or not value.isascii(), "refused by the backend, not by Envoy"
    else:
        assert status == 403 and forwarded


def _envoy_pid(gw: Gateway) -> int:
    assert gw.process is not None
    (envoy,) = [
        pid
        for pid in _children(gw.process.pid)
        if "envoy" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    return envoy


def _envoy_memory(gw: Gateway) -> int:
    """Bytes Envoy has allocated right now (its statistic of it is only updated every 5 s)."""
    return int(_envoy_admin(gw, "/memory").json()["allocated"])


def _stall_upload(port: int, path: str, sent: list[int]) -> socket.socket:
    """Sends the head and all but the last bytes of a 32 MiB body without a key, then stalls;
    stops early when the gateway stops reading. Returns the still open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_upload_head(path))
    chunk = b" " * 65536
    total = 0
    with contextlib.suppress(OSError):
        while total < UNFINISHED_BODY:
            total += sock.send(chunk)
    sent.append(total)
    return sock


def test_stalled_uploads_without_a_key_hold_no_memory(make_gateway) -> None:
    gw = make_gateway().start()
    baseline = _envoy_memory(gw)
    sent: list[int] = []
    with ThreadPoolExecutor(6) as pool:
        socks = list(pool.map(lambda _: _stall_upload(gw.http_port, CHAT, sent), range(6)))
    try:
        # Envoy may read ahead of a refused request (its connection buffer holds a 32 MiB body)
        # and frees that as it closes the connection: what counts is what the stalled uploads
        # still hold while they stay open, not a transient peak on a busy machine.
        deadline = time.monotonic() + HELD_MEMORY_WAIT
        while (grown := _envoy_memory(gw) - baseline) >= 16 * 1024 * 1024:
            assert time.monotonic() < deadline, f"Envoy holds {grown / 2**20:.0f} MiB more"
            time.sleep(0.1)
    finally:
        for sock in socks:
            sock.close()


def test_admin_bodies_are_capped_before_the_backend_checks_the_key(gateway) -> None:
    # Only the backend knows whether the admin API is on, so it answers a missing admin key;
    # what it buffers first is bounded by the admin API's small body limit.
    with _raw(gateway) as sock:
        sock.sendall(_upload_head("/v1/admin/keys") + b" " * (ADMIN_BODY_BYTES + 1024))
        raw = _read_response(sock, within=10)
    _http_error_body(raw, 413)
    # A key's fields with room to spare: 1000 model names are 9 KB.
    created = httpx.post(
        f"{gateway.url}/v1/admin/keys",
        json={"name": "capped-admin-body", "models": ["gpt-4o"] * 1000},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert created.status_code == 200, created.text


# --- connection limits ---------------------------------------------------------------------------


def _healthz_on(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    try:
        return sock.recv(65536)
    except (ConnectionResetError, TimeoutError):
        return b""


def _hold(port: int, count: int) -> list[socket.socket]:
    """`count` open connections, each proven accepted by an answered request. Retries for a
    while: connections of the start-up health checks may take a moment to be let go."""
    deadline = time.monotonic() + 10
    while True:
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
        if all(_healthz_on(sock).startswith(b"HTTP/1.1 200") for sock in held):
            return held
        for sock in held:
            sock.close()
        assert time.monotonic() < deadline, f"could not hold {count} connections"
        time.sleep(0.3)


def test_connections_over_the_limit_are_refused_then_accepted_again(make_gateway) -> None:
    limit = 4
    gw = make_gateway(extra_env={"GATEWAY_MAX_CONNECTIONS": str(limit)}).start()
    held = _hold(gw.http_port, limit)
    try:
        with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as extra:
            answer = _healthz_on(extra)
            assert answer == b"", answer  # closed by Envoy without an answer
        held.pop().close()
        held += _hold(gw.http_port, 1)  # the freed slot is usable again
    finally:
        for sock in held:
            sock.close()


# --- banners and internal headers -----------------------------------------------------------------


def test_no_server_banner_or_proxy_headers_on_any_answer(gateway, api_key, upstream) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    upstream.enqueue(Reply.json(500))
    responses = [
        httpx.get(f"{gateway.url}/healthz"),
        httpx.get(f"{gateway.url}/v1/models", headers=headers),
        httpx.get(f"{gateway.url}/no/such/path", headers=headers),
        httpx.post(f"{gateway.url}{CHAT}", json=chat_body(), headers=headers),
        httpx.post(f"{gateway.url}{CHAT}", json=chat_body()),
        httpx.get(f"{gateway.url}/healthz", headers={"x-big": "a" * 40_000}),
    ]
    assert {r.status_code for r in responses} == {200, 401, 404, 431, 502}
    for response in responses:
        names = set(response.headers)
        assert "server" not in names and "via" not in names and "x-powered-by" not in names
        assert not [n for n in names if n.startswith(("x-envoy", "grpc-", "x-openai", "x-http"))]
    # The metrics port names no software versions either.
    metrics = f"http://127.0.0.1:{gateway.metrics_port}"
    for path in ("/metrics", "/metrics/envoy"):
        response = httpx.get(f"{metrics}{path}")
        assert response.status_code == 200
        assert response.headers.get_list("server") == ["typegpt-gateway"], response.headers


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_grpc_control_headers_from_http_clients_have_no_effect(
    gateway, api_key, upstream, http2
) -> None:
    poison = {
        "grpc-timeout": "1n",  # an immediate server deadline if it got through
        "Grpc-Timeout": "1n",
        "grpc-encoding": "gzip",
        "grpc-accept-encoding": "identity",
        "grpc-status": "13",
        "grpc-message": "injected",
        "x-trace-bin": "!!not base64!!",  # a 500 if it got through
        "authorization-bin": "AAAA",
    }
    with httpx.Client(http1=not http2, http2=http2, timeout=30) as client:
        events = [make_chunk({"content": str(i)}) for i in range(3)]
        upstream.enqueue(Reply.stream(events, delay=0.3))
        streamed = client.post(
            f"{gateway.url}{CHAT}",
            json=chat_body(stream=True),
            headers={"authorization": f"Bearer {api_key}", **poison},
        )
        plain = client.post(
            f"{gateway.url}{CHAT}",
            json=chat_body(),
            headers={"authorization": f"Bearer {api_key}", **poison},
        )
        models = client.get(
            f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {api_key}", **poison}
        )
    assert streamed.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert streamed.status_code == 200 and sse_payloads(streamed.text)[-1] == "[DONE]"
    assert plain.status_code == 200 and plain.json()["object"] == "chat.completion"
    assert models.status_code == 200 and models.json()["object"] == "list"
    for response in (streamed, plain, models):
        assert not [name for name in response.headers if name.startswith("grpc-")]


# --- CORS ----------------------------------------------------------------------------------------


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{url}{CHAT}",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-stainless-os",
        },
    )


@pytest.mark.parametrize("origin", [ALLOWED_ORIGIN, OTHER_ORIGIN])
def test_cors_preflight_is_answered_for_allowed_origins(edge, origin) -> None:
    gw, _ = edge
    response = _preflight(gw.url, origin)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"]


def test_cors_preflight_is_refused_for_other_origins(edge) -> None:
    gw, _ = edge
    response = _preflight(gw.url, EVIL_ORIGIN)
    assert_error(response, 404)
    assert not [name for name in response.headers if name.startswith("access-control-")]


def test_cors_headers_only_on_answers_to_allowed_origins(edge, upstream) -> None:
    gw, key = edge
    auth = {"authorization": f"Bearer {key}"}
    allowed = httpx.post(
        f"{gw.url}{CHAT}", json=chat_body(), headers={**auth, "origin": ALLOWED_ORIGIN}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    # Error answers too, so that a page can read why it failed.
    refused = httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers={"origin": ALLOWED_ORIGIN})
    assert_error(refused, 401)
    assert refused.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    evil = httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers={**auth, "origin": EVIL_ORIGIN})
    assert evil.status_code == 200  # not a browser: CORS is no access control for curl
    assert "access-control-allow-origin" not in evil.headers


def test_cors_is_off_by_default(gateway, api_key) -> None:
    for origin in (ALLOWED_ORIGIN, EVIL_ORIGIN, "null"):
        response = _preflight(gateway.url, origin)
        assert_error(response, 404)
        assert "access-control-allow-origin" not in response.headers
        models = httpx.get(
            f"{gateway.url}/v1/models",
            headers={"authorization": f"Bearer {api_key}", "origin": origin},
        )
        assert models.status_code == 200 and "access-control-allow-origin" not in models.headers


# --- the admin interface ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of process `pid`, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            if width == 8:
                host = socket.inet_ntoa(bytes.fromhex(address)[::-1])
            else:
                host = socket.inet_ntop(
                    socket.AF_INET6,
                    b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)),
                )
            found.add((host, int(port, 16)))
    return found


def test_admin_interface_listens_on_loopback_only(gateway) -> None:
    assert gateway.process is not None
    envoys = [
        pid
        for pid in _children(gateway.process.pid)
        if "envoy" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(envoys) == 1
    listening = _listening(envoys[0])
    others = {entry for entry in listening if entry[1] != gateway.http_port}
    assert listening - others == {("127.0.0.1", gateway.http_port)}
    assert len(others) == 1, listening
    ((admin_host, admin_port),) = others
    assert admin_host == "127.0.0.1"
    # It is the admin interface, and it knows of no listener but the HTTP port.
    info = httpx.get(f"http://127.0.0.1:{admin_port}/listeners?format=json").json()
    addresses = [
        listener["local_address"]["socket_address"] for listener in info["listener_statuses"]
    ]
    assert addresses == [{"address": "127.0.0.1", "port_value": gateway.http_port}]


class _BareStatusBackend(chat_pb2_grpc.ChatServiceServicer):
    """A backend that refuses every call with the gRPC code its `x-bare-status` header names,
    bare: without the gateway's own error trailers, as a gRPC server does on its own (e.g. a
    stopping one: CANCELLED)."""

    def CreateChatCompletionHttp(self, request, context):
        code = grpc.StatusCode[dict(context.invocation_metadata())["x-bare-status"]]
        context.abort(code, code.name)


@pytest.fixture(scope="module")
def bare_status_envoy(tmp_path_factory) -> Iterator[Callable[[grpc.StatusCode], httpx.Response]]:
    """The gateway's Envoy, as rendered for `serve`, before a _BareStatusBackend: yields a
    function that sends a chat request the backend refuses with the given code."""
    server = grpc.server(ThreadPoolExecutor(2))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(_BareStatusBackend(), server)
    backend_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with bare_envoy(tmp_path_factory.mktemp("bare-status"), backend_port) as url:

            def refused_with(code: grpc.StatusCode) -> httpx.Response:
                return httpx.post(
                    f"{url}/v1/chat/completions",
                    json=chat_body(),
                    headers={
                        "authorization": "Bearer sk-any-well-formed-key",
                        "x-bare-status": code.name,
                    },
                    timeout=5,
                )

            yield refused_with
    finally:
        server.stop(0)


def test_a_call_the_stopping_backend_cancelled_is_a_retryable_503(bare_status_envoy):
    response = bare_status_envoy(grpc.StatusCode.CANCELLED)
    # Not nginx's 499 "client closed request": the client is still there, and may retry.
    error = assert_error(response, 503, "api_error")
    assert "try again" in error["message"]


def test_a_bare_grpc_status_gets_the_backends_type_for_its_http_status(bare_status_envoy):
    """The Lua filter types what the backend did not (no x-openai-error) by the backend's rule;
    and an error of the backend's whose trailers were lost would still read as its own type."""
    codes = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
    answers = {code: bare_status_envoy(code) for code in codes}
    for response in answers.values():
        assert_error(response, response.status_code, default_error_type(response.status_code))
    for status in ERROR_STATUSES:
        answer = answers[grpc_code_for(status)]
        assert answer.json()["error"]["type"] == default_error_type(status), (status, answer.text)
