"""The metrics HTTP server, on its own port (GATEWAY_METRICS_PORT, 9464), never the public one.

`/metrics` is the gateway's registry (metrics.py), or with several workers every worker's
samples, fetched from each worker's own metrics server on loopback and merged
(metrics_merge.py); `/metrics/envoy` relays Envoy's own
statistics, which the Envoy sidecar fetches from its admin interface (bound to 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .metrics import REGISTRY
from .metrics_merge import merge

ENVOY_STATS_PATH = "/metrics/envoy"
SERVER_NAME = "typegpt-gateway"
# A scraper sends its request at once and Prometheus scrapes every 15 to 60 s: a connection
# that says nothing for this long (before its first request or between two) is closed.
IDLE_TIMEOUT = 5.0
# Scrapers (a Prometheus pair, an agent, a person with curl) need a handful of connections.
MAX_CONNECTIONS = 64
# How long the body of a request (none is expected) is read and ignored after the answer.
LINGER_SECONDS = 1.0
# Start and stop of the server's thread (stopping waits for answers being written).
CALL_TIMEOUT = 10.0
# Longest wait for one worker's metrics, for one scrape.
WORKER_TIMEOUT = 5.0
_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

_T = TypeVar("_T")
Responder = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class StatsUnavailable(Exception):
    """Why Envoy's statistics cannot be had right now (raised by an EnvoyStats)."""


# Envoy's /stats/prometheus: its status and body, or StatsUnavailable. Called on the metrics
# server's own event loop, never the gateway's.
EnvoyStats = Callable[[], Awaitable[tuple[int, bytes]]]


class _CappedServer(web.Server):
    """aiohttp's low-level server, holding at most MAX_CONNECTIONS connections. One more
    pushes out the oldest connection that has no request being answered (idle, or still
    sending its request), so that such connections can never keep a scrape out."""

    def __init__(self, respond: Responder, **kwargs: Any) -> None:
        self._answering: set[RequestHandler] = set()
        self._respond = respond
        super().__init__(self._answer, **kwargs)

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        self._answering.add(request.protocol)
        try:
            response = await self._respond(request)
        finally:
            self._answering.discard(request.protocol)
        # Our own name, so that aiohttp does not announce its and Python's versions.
        response.headers["Server"] = SERVER_NAME
        return response

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        # An aborted transport stays open until the loop's next turn, and a burst of accepts
        # happens in one turn: only those not already closing count.
        open_ = [
            c for c in self.connections if c.transport is not None and not c.transport.is_closing()
        ]
        if len(open_) > MAX_CONNECTIONS:
            # The newest one at worst: it has no request yet.
            oldest = next(c for c in open_ if c not in self._answering)
            assert oldest.transport is not None
            oldest.transport.abort()


class MetricsServer:
    """The metrics HTTP server: aiohttp on a thread and event loop of its own, so that a
    scrape never waits on the gateway's loop and its clients never weigh on it. Connections
    are capped and time out (IDLE_TIMEOUT); the registry is rendered on the metrics thread,
    and a large answer is gzipped on one more."""

    def __init__(
        self,
        host: str,
        port: int,
        envoy_stats: EnvoyStats | None,
        registry: CollectorRegistry = REGISTRY,
        *,
        workers: Sequence[str] = (),
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound here, so that a port in use is an OSError for the caller.
        sock = socket.create_server((host, port), family=family)
        self.port: int = sock.getsockname()[1]
        self._envoy_stats = envoy_stats
        self._workers = tuple(workers)
        self._registry_answer = make_aiohttp_handler(registry)
        self._loop = asyncio.new_event_loop()
        # aiohttp gzips an answer over 1 MiB in the loop's default executor: one thread.
        self._loop.set_default_executor(ThreadPoolExecutor(1, thread_name_prefix="metrics-gzip"))
        self._thread = threading.Thread(target=self._loop.run_forever, name="metrics", daemon=True)
        self._thread.start()
        try:
            self._runner = self._call(self._start(sock))
        except BaseException:
            sock.close()
            self._halt()
            raise

    def _call(self, work: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(CALL_TIMEOUT)

    async def _start(self, sock: socket.socket) -> web.BaseRunner:
        server = _CappedServer(
            self._respond,
            keepalive_timeout=IDLE_TIMEOUT,
            lingering_time=LINGER_SECONDS,
            access_log=None,  # scrapes are not worth a log line each
        )
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return runner

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        if request.path == ENVOY_STATS_PATH:
            return await self._relay_envoy_stats()
        if self._workers:
            return await self._merged_workers()
        # prometheus-client types its handler for a routed web.Request, but it reads only the
        # query and headers, which the low-level server's BaseRequest has.
        return await self._registry_answer(request)  # type: ignore[arg-type]

    async def _relay_envoy_stats(self) -> web.Response:
        """Envoy's /stats/prometheus as Envoy answered it, or 503 saying why not."""
        try:
            if self._envoy_stats is None:
                raise StatsUnavailable("no Envoy runs in this process (serve --no-envoy)")
            status, body = await self._envoy_stats()
        except StatsUnavailable as exc:
            status, body = 503, f"Envoy stats unavailable: {exc}\n".encode()
        return web.Response(status=status, body=body, headers={"Content-Type": _TEXT_FORMAT})

    async def _merged_workers(self) -> web.Response:
        timeout = aiohttp.ClientTimeout(total=WORKER_TIMEOUT)
        # No proxy from the environment (trust_env is off): the workers are on loopback.
        async with aiohttp.ClientSession(timeout=timeout) as session:
            texts = await asyncio.gather(*(_read(session, url) for url in self._workers))
        body = merge([(str(index), text) for index, text in enumerate(texts)])
        return web.Response(body=body, headers={"Content-Type": _TEXT_FORMAT})

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._loop.shutdown_default_executor()

    def _halt(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        try:
            self._call(self._stop())
        finally:
            self._halt()


async def _read(session: aiohttp.ClientSession, url: str) -> str | None:
    """A worker's exposition, or None while it cannot answer (dead, restarting)."""
    try:
        async with session.get(url) as reply:
            if reply.status != 200:
                return None
            return await reply.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
