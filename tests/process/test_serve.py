"""Supervision by `typegpt-gateway serve`: the gRPC backend in-process, Envoy as its child.

Either one failing must end the whole gateway with a non-zero exit and a log line saying
why; SIGTERM/SIGINT must stop both promptly with exit code 0 and leave no Envoy behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import httpx
import pytest
from fake_upstream import Reply
from gateway_process import CLI, UPSTREAM_KEY, Gateway, free_port

from typegpt_gateway.ops import logs
from typegpt_gateway.ops.metrics_server import StatsUnavailable
from typegpt_gateway.process.envoy import EnvoyAdmin

EXIT_TIMEOUT = 8.0
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


# -- helpers --------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in path.read_text().split()]
        except OSError:
            continue
    return children


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: tells a process apart from a later one with its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, only waiting to be reaped
        return None
    return fields[19]


def envoy_child(gw: Gateway) -> tuple[int, str]:
    """PID and start time of the Envoy process `serve` started."""
    assert gw.process is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for child in _children(gw.process.pid):
            started = _start_time(child)
            if "envoy" in _cmdline(child) and started is not None:
                return child, started
        time.sleep(0.05)
    raise AssertionError(f"no Envoy child of {gw.process.pid}: {_children(gw.process.pid)}")


def wait_gone(pid: int, started: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _start_time(pid) != started:
            return True
        time.sleep(0.05)
    return False


def wait_exit(gw: Gateway, timeout: float = EXIT_TIMEOUT) -> int | None:
    assert gw.process is not None
    try:
        return gw.process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def chat_with_fresh_key(gw: Gateway, name: str) -> tuple[str, httpx.Response]:
    """Creates a key and posts a chat request once the running server knows the key."""
    key = gw.create_key(name)
    deadline = time.monotonic() + 5
    while True:
        response = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
        if response.status_code != 403 or time.monotonic() > deadline:
            return key, response
        time.sleep(0.05)


def _port_in_use_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


# -- tests ----------------------------------------------------------------------------------


def test_ready_line_names_the_url(make_gateway) -> None:
    gw = make_gateway().start()
    line = gw.wait_for_log(r"^.*\bready\b.*$")
    assert line is not None, gw.log()
    assert f"http://127.0.0.1:{gw.http_port}" in line.group(0)
    assert f"http://127.0.0.1:{gw.http_port}/v1" in line.group(0)
    assert UPSTREAM_KEY not in gw.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_gateway_and_envoy(make_gateway, signum) -> None:
    gw = make_gateway().start()
    envoy, started = envoy_child(gw)
    assert gw.process is not None

    began = time.monotonic()
    gw.process.send_signal(signum)
    code = wait_exit(gw)
    assert code == 0, gw.log()
    assert time.monotonic() - began < 5
    assert wait_gone(envoy, started, 2), f"Envoy {envoy} outlived serve"
    # Both listeners are closed.
    for port in (gw.http_port, gw.grpc_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_sigterm_with_a_request_in_flight_exits_promptly(make_gateway, upstream) -> None:
    # The hung request is cut when the drain time is up.
    gw = make_gateway(extra_env={"GATEWAY_DRAIN_TIMEOUT": "2"}).start()
    key, warmup = chat_with_fresh_key(gw, "in-flight")
    assert warmup.status_code == 200, warmup.text
    upstream.enqueue(Reply.hang(30))
    seen = len(upstream.requests)
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(
                httpx.post(
                    f"{gw.url}/v1/chat/completions",
                    json=CHAT,
                    headers={"authorization": f"Bearer {key}"},
                    timeout=12,
                )
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    client = threading.Thread(target=call, daemon=True)
    client.start()
    assert upstream.wait_for_requests(seen + 1, 5), gw.log()

    assert gw.process is not None
    began = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    code = wait_exit(gw)
    assert code == 0, gw.log()
    assert time.monotonic() - began < 7.5
    client.join(5)
    assert outcome, "the client is still waiting after the gateway exited"


def test_envoy_killed_ends_serve_with_error(make_gateway) -> None:
    gw = make_gateway().start()
    envoy, _ = envoy_child(gw)
    os.kill(envoy, signal.SIGKILL)
    code = wait_exit(gw)
    assert code is not None, f"serve kept running without Envoy:\n{gw.log()}"
    assert code != 0
    assert re.search(r"Envoy exited", gw.log()), gw.log()
    # The backend went down with it.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", gw.grpc_port)) != 0


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_killed_outright_leaves_no_envoy_holding_its_port(make_gateway, workers) -> None:
    # SIGKILL passes nothing on: without the kernel's parent-death signal Envoy stayed,
    # holding port 7000, and the restart that follows failed on it.
    gw = make_gateway(workers=workers).start()
    envoy, started = envoy_child(gw)
    assert gw.process is not None
    gw.process.kill()
    gw.process.wait(10)
    try:
        assert wait_gone(envoy, started, 20), f"Envoy {envoy} outlived serve"
    finally:
        with contextlib.suppress(ProcessLookupError):
            if _start_time(envoy) == started:
                os.kill(envoy, signal.SIGKILL)
    again = make_gateway(http_port=gw.http_port, grpc_port=gw.grpc_port).start()
    assert httpx.get(f"{again.url}/healthz", timeout=5).status_code == 200


def test_http_port_taken(make_gateway) -> None:
    with _port_in_use_socket() as blocker:
        gw = make_gateway(http_port=blocker.getsockname()[1])
        with pytest.raises(RuntimeError, match="exited early"):
            gw.start(timeout=12)
    assert gw.process is not None
    assert gw.process.returncode not in (None, 0)
    log = gw.log()
    port = gw.http_port
    # Envoy says which address it could not take; serve says Envoy stopped the gateway.
    assert re.search(rf"{port}.*[Aa]ddress already in use", log), log
    assert re.search(r"Envoy exited .*stopping the gateway", log), log


def test_grpc_port_taken(make_gateway) -> None:
    with _port_in_use_socket() as blocker:
        gw = make_gateway(grpc_port=blocker.getsockname()[1])
        with pytest.raises(RuntimeError, match="exited early"):
            gw.start(timeout=12)
    assert gw.process is not None
    assert gw.process.returncode not in (None, 0)
    log = gw.log()
    assert re.search(rf"gRPC server could not start on 127\.0\.0\.1:{gw.grpc_port}", log), log
    assert "Traceback" not in log


def test_missing_upstream_key(make_gateway, upstream) -> None:
    gw = make_gateway(upstream_key=None).start()
    warning = gw.wait_for_log(r"^.*WARNING.*TYPEGPT_API_KEY.*$")
    assert warning is not None, gw.log()
    assert "not set" in warning.group(0)

    key, response = chat_with_fresh_key(gw, "no-upstream-key")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 503
    assert error["type"] == "api_error"
    assert "not configured" in error["message"]
    # The setting's name may be shown, never a secret.
    for text in (response.text, gw.log()):
        assert UPSTREAM_KEY not in text
        assert key not in text
    assert "Bearer" not in response.text
    assert upstream.requests == []

    # The rest of the gateway works without the upstream key.
    models = httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5)
    assert models.status_code == 200
    assert gw.stop() == 0


def test_sigterm_during_startup(make_gateway) -> None:
    gw = make_gateway()
    process = gw.spawn()
    # As soon as Envoy exists, before the gateway has necessarily become healthy.
    envoy, started = envoy_child(gw)
    process.send_signal(signal.SIGTERM)
    code = wait_exit(gw)
    assert code == 0, gw.log()
    assert wait_gone(envoy, started, 2), f"Envoy {envoy} outlived serve"


def _health(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "health", "--target", target, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_no_envoy_serves_grpc_only(make_gateway) -> None:
    gw = make_gateway()
    process = gw.spawn("--no-envoy")
    line = gw.wait_for_log(rf"gRPC backend serving on 127\.0\.0\.1:{gw.grpc_port}", 10)
    assert line is not None, gw.log()
    assert process.poll() is None

    healthy = _health(gw.grpc_target)
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.strip() == "serving"
    assert _children(process.pid) == []
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", gw.http_port)) != 0

    process.send_signal(signal.SIGTERM)
    assert wait_exit(gw) == 0, gw.log()
    unhealthy = _health(gw.grpc_target)
    assert unhealthy.returncode == 1
    assert "unhealthy" in unhealthy.stderr


# -- Envoy's admin interface ---------------------------------------------------------------


def _envoy_admin(gw: Gateway) -> EnvoyAdmin:
    """The sidecar's view of the running Envoy: the address file its command line names."""
    pid, _ = envoy_child(gw)
    args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return EnvoyAdmin(Path(args[args.index("--admin-address-path") + 1]))


def test_envoy_admin_reads_stats_waits_for_requests_and_closes_the_listener(
    make_gateway, upstream
) -> None:
    gw = make_gateway().start()
    key, warmup = chat_with_fresh_key(gw, "admin-calls")
    assert warmup.status_code == 200, warmup.text
    admin = _envoy_admin(gw)

    status, body = asyncio.run(admin.prometheus_stats())
    assert status == 200 and b"envoy_cluster_upstream_rq" in body

    # A request Envoy still carries keeps wait_idle waiting; its end lets it return.
    upstream.enqueue(Reply.hang(60))
    seen = len(upstream.requests)
    body = json.dumps(CHAT).encode()
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert upstream.wait_for_requests(seen + 1, 10), gw.log()
        with pytest.raises(TimeoutError):
            asyncio.run(asyncio.wait_for(admin.wait_idle(), 1))
    asyncio.run(asyncio.wait_for(admin.wait_idle(), 30))

    assert asyncio.run(admin.stop_listening())
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", gw.http_port)) != 0:
                break
        assert time.monotonic() < deadline, "Envoy still accepts connections"
        time.sleep(0.05)


@pytest.mark.parametrize("address", [None, "unreachable"])
def test_envoy_admin_without_an_envoy_to_ask(tmp_path, address) -> None:
    address_file = tmp_path / "envoy-admin-address"
    if address == "unreachable":
        address_file.write_text(f"127.0.0.1:{free_port()}\n")
    admin = EnvoyAdmin(address_file)
    reason = "not written its admin address" if address is None else "Cannot connect"
    with pytest.raises(StatsUnavailable, match=reason):
        asyncio.run(admin.prometheus_stats())
    assert asyncio.run(admin.stop_listening()) is False
    asyncio.run(asyncio.wait_for(admin.wait_idle(), 30))


# -- a stalled log reader -------------------------------------------------------------------

# A request whose logged line is about 64 KiB (GATEWAY_LOG_BODIES cuts a body to that).
CHATTY = {**CHAT, "messages": [{"role": "user", "content": "x" * 60_000}]}
# Lines of CHATTY's size that log far more than the pipe (64 KiB) and the log queue hold.
CHATTY_REQUESTS = 2 * logs.QUEUE_CHARS // 60_000
CHATTY_CLIENTS = 8
# A stalled loop answers nothing at all; a healthy one answers all of them within this.
STALLED_LOG_BATCH_SECONDS = 60.0
DROPPED = re.compile(r"(\d+) log lines? (?:was|were) dropped")


class _PipeReader(threading.Thread):
    """Reads a pipe to its end, so that the test can look at what was written so far."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self._pipe = pipe
        self._chunks: list[bytes] = []

    def run(self) -> None:
        while chunk := self._pipe.read1(1 << 16):  # type: ignore[attr-defined]
            self._chunks.append(chunk)

    def records(self) -> list[dict[str, object]]:
        lines = b"".join(list(self._chunks)).decode(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def _log_far_more_than_is_read(gw: Gateway) -> None:
    """Sends requests that log far more than the unread pipe holds, then a batch of ordinary
    ones: all are answered, in a bounded time."""
    key = gw.wait_for_key(gw.create_key("chatty"))
    url = f"{gw.url}/v1/chat/completions"

    failed = threading.Event()  # once one request failed, the rest are not sent

    def post(client: httpx.Client, body: dict[str, object]) -> object:
        if failed.is_set():
            return "not sent"
        try:
            return client.post(url, json=body).status_code
        except httpx.HTTPError as exc:
            failed.set()
            return repr(exc)

    began = time.monotonic()
    with (
        httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=10) as client,
        ThreadPoolExecutor(CHATTY_CLIENTS) as pool,
    ):
        chatty = list(pool.map(lambda body: post(client, body), [CHATTY] * CHATTY_REQUESTS))
        ordinary = [post(client, CHAT) for _ in range(20)]
    assert chatty == [200] * CHATTY_REQUESTS, [o for o in chatty if o != 200][:2]
    assert ordinary == [200] * 20, ordinary
    assert time.monotonic() - began < STALLED_LOG_BATCH_SECONDS


def test_a_stalled_log_reader_stalls_no_request_and_is_told_what_it_missed(make_gateway) -> None:
    gw = make_gateway(extra_env={"GATEWAY_LOG_BODIES": "true"}).start(output=subprocess.PIPE)
    assert gw.process is not None and gw.process.stdout is not None
    _log_far_more_than_is_read(gw)

    reader = _PipeReader(gw.process.stdout)
    reader.start()
    key = gw.create_key("after-the-stall")
    # The first line logged once the queue has room again is preceded by the count of lines
    # lost.
    deadline = time.monotonic() + 20
    while not any(DROPPED.search(str(r.get("message"))) for r in reader.records()):
        assert time.monotonic() < deadline, reader.records()[-3:]
        httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5)
        time.sleep(0.1)
    gw.process.send_signal(signal.SIGTERM)
    assert wait_exit(gw, 15) == 0
    reader.join(5)
    records = reader.records()
    notices = [r for r in records if DROPPED.search(str(r.get("message")))]
    assert notices[0]["level"] == "WARNING"
    dropped = int(DROPPED.search(str(notices[0]["message"])).group(1))  # type: ignore[union-attr]
    assert dropped > 0
    # Envoy's lines take the same way; the last line of all was written before the exit.
    assert any(r.get("logger") == "envoy" for r in records)
    assert str(records[-1]["message"]).startswith("stopped;"), records[-3:]


def test_a_log_reader_stalled_for_good_does_not_hold_the_exit(make_gateway) -> None:
    gw = make_gateway(extra_env={"GATEWAY_LOG_BODIES": "true"}).start(output=subprocess.PIPE)
    assert gw.process is not None and gw.process.stdout is not None
    _log_far_more_than_is_read(gw)
    began = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    assert wait_exit(gw, 20) == 0
    assert time.monotonic() - began < 20
    gw.process.stdout.close()
