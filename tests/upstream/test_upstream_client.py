"""The upstream HTTP client (aiohttp) where its behaviour is easy to get wrong.

aiohttp's errors about a response (ClientResponseError and its kin) carry `request_info`, with
the request's headers, Authorization included. The first tests make aiohttp raise them for real
(an upstream that answers something not HTTP, and one that refuses the connection) and check
that neither the client's answer nor a log line nor a formatted traceback holds the key.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import socketserver
import ssl
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import httpx
import pytest
from gateway_process import SCRIPTED_FAILURES, UPSTREAM_KEY, free_port
from openai_shape import assert_error
from tls_certs import make_server_certificate

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream.client import CHAT_CALL, finish
from typegpt_gateway.upstream.failover import Failover
from typegpt_gateway.upstream.retry import AttemptFailed

CHAT_BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}'


class _NotHttp(socketserver.BaseRequestHandler):
    """Reads the request's head, then answers with a status line no HTTP client accepts."""

    def handle(self) -> None:
        self.request.settimeout(5)
        received = b""
        while b"\r\n\r\n" not in received:
            data = self.request.recv(65536)
            if not data:
                return
            received += data
        self.request.sendall(b"HTTP/1.1 2x0 nonsense\r\n\r\n")


@pytest.fixture(scope="module")
def not_http() -> Iterator[str]:
    """The base URL of an upstream that answers garbage."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _NotHttp)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def _settings(base_url: str) -> Settings:
    return Settings(
        TYPEGPT_API_KEY=UPSTREAM_KEY,
        TYPEGPT_BASE_URL=base_url,
        upstream_max_attempts=1,
        upstream_cooldown_after=0,
        upstream_connect_timeout=2.0,
    )


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


async def _attempt(base_url: str) -> tuple[AttemptFailed, GatewayError]:
    """One upstream attempt that fails, and the error the client would get from failover."""
    failover = Failover.from_settings(_settings(base_url), None)
    try:
        upstream = failover.upstreams[0]
        deadlines = failover.deadlines()
        with pytest.raises(AttemptFailed) as attempt:
            await upstream.send(CHAT_CALL, CHAT_BODY, stream=False, due=deadlines.first_byte())
        with pytest.raises(GatewayError) as client_error:
            await failover.open("gpt-4o", CHAT_BODY, stream=False, deadlines=deadlines)
        return attempt.value, client_error.value
    finally:
        await failover.aclose()


@pytest.mark.parametrize(
    ("kind", "aiohttp_error"),
    [("not_http", aiohttp.ClientResponseError), ("refused", aiohttp.ClientConnectorError)],
)
def test_aiohttp_errors_never_put_the_key_in_an_answer_or_a_log_line(
    kind, aiohttp_error, not_http, caplog
) -> None:
    base_url = not_http if kind == "not_http" else _refused_url()
    with caplog.at_level(logging.DEBUG):
        failure, client_error = asyncio.run(asyncio.wait_for(_attempt(base_url), 10))

    assert failure.retryable and failure.cools
    assert failure.error.status == 502
    assert failure.error.message == f"Could not reach the upstream API ({aiohttp_error.__name__})."
    cause = failure.__cause__
    assert isinstance(cause, aiohttp_error)
    if isinstance(cause, aiohttp.ClientResponseError):
        # The danger is real: the error holds the request's Authorization header.
        assert UPSTREAM_KEY in repr(cause.request_info)

    shown = [client_error.message, client_error.to_json(), str(client_error), str(failure.error)]
    assert all(UPSTREAM_KEY not in text for text in shown)
    for error in (failure, client_error):
        assert UPSTREAM_KEY not in "".join(traceback.format_exception(error))
        assert all(UPSTREAM_KEY not in str(link) for link in _chain(error))
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "failed" in logged  # failover logged the attempt
    assert UPSTREAM_KEY not in logged


def test_a_gateway_whose_upstream_speaks_no_http_answers_502_without_the_key(
    make_gateway, not_http
) -> None:
    gw = make_gateway(upstream_url=not_http, extra_env=SCRIPTED_FAILURES).start()
    key = gw.create_key("secrets")
    response = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=CHAT_BODY,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
    )
    assert_error(response, 502, "api_error")
    assert "ClientResponseError" in response.json()["error"]["message"]
    assert UPSTREAM_KEY not in response.text
    assert UPSTREAM_KEY not in str(response.headers)
    gw.stop()
    log = gw.log()
    assert "failed" in log
    assert UPSTREAM_KEY not in log


def test_a_connect_timeout_is_a_retryable_502_not_a_late_answer() -> None:
    # aiohttp's connect timeout is also a TimeoutError, the type of a late answer (504, not
    # retried). A listener that never accepts, its backlog full, leaves a connect hanging.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        queued.append(client)

    async def attempt() -> tuple[AttemptFailed, float]:
        settings = _settings(f"http://127.0.0.1:{port}/v1")
        settings = settings.model_copy(
            update={"upstream_connect_timeout": 0.5, "upstream_first_byte_timeout": 5.0}
        )
        failover = Failover.from_settings(settings, None)
        try:
            due = failover.deadlines().first_byte()
            started = time.monotonic()
            with pytest.raises(AttemptFailed) as failed:
                await failover.upstreams[0].send(CHAT_CALL, CHAT_BODY, stream=False, due=due)
            return failed.value, time.monotonic() - started
        finally:
            await failover.aclose()

    try:
        failure, waited = asyncio.run(asyncio.wait_for(attempt(), 10))
    finally:
        for sock in (*queued, listener):
            sock.close()
    assert failure.error.status == 502, failure.error
    assert "ConnectionTimeoutError" in failure.error.message
    assert failure.retryable and failure.cools
    assert waited < 4


# --- trust: the upstream's certificate -----------------------------------------------------


class _Answers(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = b'{"choices": []}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_upstream(tmp_path) -> Iterator[tuple[str, Path]]:
    """The base URL of an upstream on HTTPS, and the private CA that signed its certificate."""
    certificate = make_server_certificate(tmp_path / "certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v1", certificate.ca
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _status(base_url: str) -> int:
    failover = Failover.from_settings(_settings(base_url), None)
    try:
        due = failover.deadlines().first_byte()
        response = await failover.upstreams[0].send(CHAT_CALL, CHAT_BODY, stream=False, due=due)
        await response.read()
        finish(response)
        return response.status
    finally:
        await failover.aclose()


def test_an_upstream_signed_by_a_private_ca_is_trusted_through_ssl_cert_file(
    https_upstream, monkeypatch
) -> None:
    base_url, ca = https_upstream
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    assert asyncio.run(asyncio.wait_for(_status(base_url), 10)) == 200

    # Without it, nothing the client trusts vouches for the certificate.
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(AttemptFailed) as failed:
        asyncio.run(asyncio.wait_for(_status(base_url), 10))
    assert failed.value.error.status == 502
    assert isinstance(failed.value.__cause__, aiohttp.ClientConnectorCertificateError)
