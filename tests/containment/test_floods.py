"""Containment of misbehaving clients: floods of requests with random model names, garbage
keys or no admin key, idle connections to the metrics port, and stalled unauthenticated
uploads of 32 MiB. While one acts, well-behaved clients keep being served, every one of them,
and the gateway's memory, threads, open files and metric series stay within stated bounds.

The bounds are the contract (README, "Failure containment"): what a flood may cost at most,
whatever its size, on top of what the gateway holds serving normal traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import httpx
import pytest
from gateway_process import Gateway
from steady_load import (
    CHAT,
    Footprint,
    Reading,
    SteadyLoad,
    assert_contained,
)

from typegpt_gateway.ops import metrics_server

FLOOD_REQUESTS = 10_000
FLOOD_CONCURRENCY = 32
FLOOD_SECONDS = 60.0  # a flood that is not over by then stops anyway, and fails the count
# Well-behaved requests during a flood, against before it: median latency at most this
# factor higher (the flood and the clients share two cores and one backend process).
MAX_LATENCY_FACTOR = 25


async def _flood(url: str, requests: Iterator[tuple[str, str, dict[str, str], bytes]]) -> Counter:
    """Sends the requests, FLOOD_CONCURRENCY at a time; counts the statuses."""
    statuses: Counter[int] = Counter()
    ends = time.monotonic() + FLOOD_SECONDS
    connector = aiohttp.TCPConnector(limit=FLOOD_CONCURRENCY)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def worker() -> None:
            for method, path, headers, body in requests:
                if time.monotonic() > ends:
                    return
                try:
                    async with session.request(method, path, headers=headers, data=body) as reply:
                        await reply.read()
                        statuses[reply.status] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1  # type: ignore[index]

        await asyncio.gather(*(worker() for _ in range(FLOOD_CONCURRENCY)))
    return statuses


def flood(gateway: Gateway, requests: Iterator[tuple[str, str, dict[str, str], bytes]]) -> Counter:
    return asyncio.run(_flood(gateway.url, requests))


def random_models(key: str) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    for number in range(FLOOD_REQUESTS):
        # A few names of 1 MiB among short random ones.
        name = "m" * (1024 * 1024) if number % 2000 == 0 else secrets.token_hex(8)
        body = f'{{"model": "{name}", "messages": [{{"role": "user", "content": "hi"}}]}}'
        yield "POST", CHAT, headers, body.encode()


def garbage_keys(key: str) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    for _ in range(FLOOD_REQUESTS):
        headers = {"authorization": f"Bearer sk-{secrets.token_urlsafe(32)}"}
        yield "POST", CHAT, {**headers, "content-type": "application/json"}, body


def unauthenticated_admin_calls(key: str) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
    for number in range(FLOOD_REQUESTS):
        # Without a key, and with a client key where the admin key belongs.
        headers = {"authorization": f"Bearer {key}"} if number % 2 else {}
        yield "GET", "/v1/admin/keys", headers, b""


FLOODS: dict[str, tuple[Callable[[str], Iterator], set[int]]] = {
    "random model names": (random_models, {404}),
    "garbage keys": (garbage_keys, {403}),
    "unauthenticated admin calls": (unauthenticated_admin_calls, {401, 403}),
}


@pytest.fixture
def served(make_gateway) -> Iterator[tuple[Gateway, list[str], str]]:
    """A gateway (admin API off, as by default), three well-behaved keys and the flooder's."""
    gateway = make_gateway(admin_key=None).start()
    good = [gateway.wait_for_key(gateway.create_key(f"good-{n}")) for n in range(3)]
    flooder = gateway.wait_for_key(gateway.create_key("flooder"))
    yield gateway, good, flooder


@pytest.mark.parametrize("kind", FLOODS)
def test_a_flood_leaves_clients_served_and_the_gateway_bounded(kind, served):
    gateway, good, flooder = served
    requests, expected = FLOODS[kind]
    with SteadyLoad(gateway, good) as load:
        load.wait_for(100)
        calm = load.median_latency()
        before = Reading.of(gateway)
        load.latencies.clear()
        statuses = flood(gateway, requests(flooder))
        during = load.median_latency()
        load.wait_for(30)
    after = Reading.of(gateway)
    assert_contained(
        kind,
        load,
        before,
        after,
        f"{sum(statuses.values())} flood requests {dict(statuses)}; median latency "
        f"{calm * 1000:.0f} ms calm, {during * 1000:.0f} ms during",
    )
    assert sum(statuses.values()) == FLOOD_REQUESTS and set(statuses) <= expected, statuses
    assert during <= max(MAX_LATENCY_FACTOR * calm, 0.05), (calm, during)


def test_idle_connections_to_the_metrics_port_cost_no_thread_each(served):
    gateway, good, _ = served
    idle: list[socket.socket] = []
    try:
        with SteadyLoad(gateway, good) as load:
            load.wait_for(20)
            before = Reading.of(gateway)
            for number in range(200):
                sock = socket.create_connection(("127.0.0.1", gateway.metrics_port), timeout=5)
                if number % 20 == 0:  # some half-sent requests among the idle ones
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                idle.append(sock)
            load.wait_for(20)
            began = time.monotonic()
            during = Reading.of(gateway)  # a real scrape is still answered, and at once
            scrape_seconds = time.monotonic() - began
    finally:
        for sock in idle:
            sock.close()
    assert_contained(
        "200 idle connections to the metrics port",
        load,
        before,
        during,
        f"a scrape meanwhile took {scrape_seconds * 1000:.0f} ms",
        # The metrics server keeps up to its cap of connections open, and no more.
        max_fd_growth=metrics_server.MAX_CONNECTIONS,
    )
    assert scrape_seconds < 5


def envoy_pid(gateway: Gateway) -> int:
    assert gateway.process is not None
    pid = gateway.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0])


STALLED_UPLOADS = 6
UPLOAD_BYTES = 32 * 1024 * 1024
# What six stalled 32 MiB uploads without a key may hold in Envoy, at most.
MAX_ENVOY_GROWTH = 24 * 1024 * 1024


def stalled_upload(gateway: Gateway) -> tuple[socket.socket, bytes]:
    """An unauthenticated upload of all but the last byte of a 32 MiB body, left hanging;
    returns the socket and whatever the gateway answered meanwhile."""
    sock = socket.create_connection(("127.0.0.1", gateway.http_port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % UPLOAD_BYTES
    )
    chunk = b"x" * (1024 * 1024)
    sent = 0
    sock.settimeout(0.5)
    answer = b""
    while sent < UPLOAD_BYTES - 1:
        try:
            sent += sock.send(chunk[: UPLOAD_BYTES - 1 - sent])
        except (BlockingIOError, TimeoutError):
            pass
        except OSError:
            break  # the gateway answered and closed: nothing more is read
        with contextlib.suppress(OSError):  # BlockingIOError: nothing said yet
            answer += sock.recv(65536, socket.MSG_DONTWAIT)
        if answer:
            break
    return sock, answer


def test_stalled_unauthenticated_uploads_are_refused_before_their_body(served):
    gateway, good, _ = served
    envoy = envoy_pid(gateway)
    before = Footprint.of(envoy)
    uploads = []
    try:
        with SteadyLoad(gateway, good) as load:
            load.wait_for(20)
            uploads = [stalled_upload(gateway) for _ in range(STALLED_UPLOADS)]
            load.wait_for(30)
            during = Footprint.of(envoy)
    finally:
        for sock, _ in uploads:
            sock.close()
    print(
        f"\n[containment] {STALLED_UPLOADS} stalled 32 MiB uploads without a key: well-behaved "
        f"{load.succeeded}/{load.sent} ok; Envoy RSS {before.rss_bytes >> 20} -> "
        f"{during.rss_bytes >> 20} MiB; answered {uploads[0][1].split(b' ', 2)[1].decode()}"
        " before the body"
    )
    assert load.failures == [], load.failures[:5]
    assert during.rss_bytes - before.rss_bytes < MAX_ENVOY_GROWTH, (before, during)
    for _, answer in uploads:
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b'"type":"authentication_error"' in answer


# A body of the largest size in the smallest objects: the costliest one to read (every object
# is checked for a key given twice, and counted for the estimate).
LARGE_BODY = (
    b'{"model": "gpt-4o", "messages": ['
    + b",".join([b'{"role": "user", "content": "x"}'] * 500_000)
    + b"]}"
)
LARGE_BODIES, LARGE_CONCURRENCY = 12, 3
# Read into Python objects, such a body takes about 21 times its size at its peak (orjson's
# document being built), and the gateway reads one large body at a time; each of the others
# in flight is held a few times over on its way in (gRPC's buffer, the message, its bytes).
# The Responses bridge holds its chat completion's messages beside the document it reads
# (measured: about 27 times the size, against chat's 17), then the pipeline reads those.
LARGE_BODIES_BY_ROUTE = {
    CHAT: (LARGE_BODY, 24),
    "/v1/responses": (LARGE_BODY.replace(b'"messages"', b'"input"  '), 34),
}


@pytest.mark.parametrize("path", LARGE_BODIES_BY_ROUTE)
def test_a_client_sending_the_costliest_bodies_leaves_others_served(served, path):
    gateway, good, _ = served
    body, peak_factor = LARGE_BODIES_BY_ROUTE[path]
    # Limited to one request a minute: after the first, each is read, then refused.
    heavy = gateway.wait_for_key(gateway.create_key("heavy", "--rpm", "1"))
    headers = {"authorization": f"Bearer {heavy}", "content-type": "application/json"}

    took: list[float] = []

    def send(_: int) -> int:
        began = time.monotonic()
        status = httpx.post(
            f"{gateway.url}{path}", content=body, headers=headers, timeout=120
        ).status_code
        took.append(time.monotonic() - began)
        return status

    # The route's first answer adds its metric series (bounded by the catalog): before the
    # reading.
    small = LARGE_BODY[: LARGE_BODY.index(b"}") + 1] + b"]}"
    first = httpx.post(
        f"{gateway.url}{path}",
        content=small if path == CHAT else small.replace(b'"messages"', b'"input"'),
        headers={"authorization": f"Bearer {good[0]}", "content-type": "application/json"},
        timeout=30,
    )
    assert first.status_code == 200, first.text
    with SteadyLoad(gateway, good) as load:
        load.wait_for(60)
        calm = load.median_latency()
        before = Reading.of(gateway)
        load.latencies.clear()
        with ThreadPoolExecutor(LARGE_CONCURRENCY) as pool:
            statuses = Counter(pool.map(send, range(LARGE_BODIES)))
        during = load.median_latency()
        slowest = max(load.latencies)
        load.wait_for(30)
    assert_contained(
        f"{LARGE_BODIES} bodies of {len(body) >> 20} MiB in 500,000 objects to {path}",
        load,
        before,
        Reading.of(gateway),
        f"{dict(statuses)}; median latency {calm * 1000:.0f} ms calm, {during * 1000:.0f} ms "
        f"during, the slowest {slowest:.2f} s; each large body {min(took):.2f}-{max(took):.2f} s",
        max_rss_growth=(peak_factor + 4 * LARGE_CONCURRENCY) * len(body),
    )
    assert sum(statuses.values()) == LARGE_BODIES and set(statuses) <= {200, 429}, statuses
    assert during <= max(MAX_LATENCY_FACTOR * calm, 0.05), (calm, during)
    # Reading a large body on the event loop stalled every other client for as long as that
    # read (the slowest well-behaved request took longer than a large body's whole turn);
    # off the loop they wait only for their share of the interpreter.
    assert slowest < min(took), (slowest, min(took))
