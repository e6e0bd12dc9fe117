"""Envoy's edge, hardened: slow clients, size limits, connection limits, banners, gRPC control
headers from HTTP clients, CORS, and an admin interface reachable from loopback only.

A dedicated gateway runs with short client timeouts and a CORS origin so that each limit can be
hit quickly; everything is real (Envoy, the gRPC server, the fake upstream) and on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from fake_upstream import Reply, make_chunk
from gateway_process import ADMIN_KEY, Gateway, running
from openai_shape import assert_error, chat_body, sse_payloads

from typegpt_gateway.envoy import render_config
from typegpt_gateway.settings import Settings

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
        httpx.get(f"{gateway.url}/no/such/path"),
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


def test_cors_origins_must_be_origins(monkeypatch) -> None:
    for bad in ("app.example.com", "https://app.example.com/path", "*", "https://a b"):
        monkeypatch.setenv("GATEWAY_CORS_ORIGINS", bad)
        with pytest.raises(ValueError, match="not an origin"):
            Settings()
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.example/, http://[::1]:8080")
    assert Settings().cors_origins == ("https://a.example", "http://[::1]:8080")


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


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_rendered_admin_address_is_loopback_whatever_the_http_host(host) -> None:
    config = yaml.safe_load(render_config(Settings(host=host, envoy_admin_port=9901), grpc_port=1))
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9901,
    }
    assert (
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == host
    )
