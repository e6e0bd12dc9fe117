"""`typegpt-gateway serve`: the gRPC backend in this process, Envoy beside it, both supervised;
or, with several workers (GATEWAY_WORKERS), the backends in worker processes (workers.py).

Either one dying ends the other with a clear log line and a non-zero exit. SIGINT/SIGTERM
drain, then exit 0: readiness turns not-ready, Envoy stops accepting connections, requests and
streams in flight get up to GATEWAY_DRAIN_TIMEOUT seconds to finish, then both stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from ..keystore.store import SchemaTooNewError
from ..ops.metrics_server import MetricsServer
from ..settings import Settings
from ..upstream.upstreams_file import ConfigError, read_config
from .backend import Backend, start_backend
from .envoy import (
    EnvoyAdmin,
    admin_address_file,
    connect_host,
    relay_output,
    start_envoy,
)
from .envoy_config import render_config
from .workers import WorkerPool, WorkerStartError

logger = logging.getLogger("typegpt_gateway")

READY_TIMEOUT = 30.0
STOP_GRACE = 5.0
# Allocations between two collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


async def _wait_until_healthy(url: str, envoy: asyncio.subprocess.Process) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while time.monotonic() < deadline and envoy.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                # Our own listener over loopback: its certificate need not name 127.0.0.1.
                async with session.get(url, ssl=False) as reply:
                    if reply.status == 200:
                        return True
            await asyncio.sleep(0.1)
    return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _drain(backend: Backend, settings: Settings, admin: EnvoyAdmin | None) -> None:
    logger.info(
        "draining: not ready, refusing new requests; in-flight ones get up to %gs",
        settings.drain_timeout,
    )
    await backend.begin_drain()
    if admin is not None and not await admin.stop_listening():
        logger.warning("could not close Envoy's listeners; stopping the backend anyway")
    await backend.stop(settings.drain_timeout)
    if admin is not None:
        # Envoy may still be writing the last bytes of a finished stream to its client.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE):
                await admin.wait_idle()


def _report_leftovers(*ours: asyncio.Task[object]) -> None:
    """Cancels serve's own tasks and logs any other still alive: every request's work should
    have ended with the drain, so a number above 0 points at a leak."""
    for task in ours:
        task.cancel()
    left = [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and task not in ours
    ]
    logger.info("stopped; %d tasks left", len(left))


def _warn_missing_keys(backend: Backend) -> None:
    for spec in backend.upstreams.unconfigured:
        if spec.key_setting == "TYPEGPT_API_KEY":
            logger.warning(
                "TYPEGPT_API_KEY is not set: the gateway starts, but every chat request will "
                "get 503 'upstream API key is not configured' until it is set"
            )
        else:
            logger.warning(
                "upstream %r has no API key (%s is not set): it takes no requests",
                spec.name,
                spec.key_setting,
            )


def _warn_unpriced(backend: Backend, models: tuple[str, ...]) -> None:
    """The catalog's models without a price on an upstream serving them: their requests'
    cost is unknown (counted as unpriced), never 0."""
    routes = backend.upstreams.router.routes
    served = {model: [route.name for route in routes if route.serves(model)] for model in models}
    for model, lacking in backend.accounting.prices.unpriced(served).items():
        logger.warning(
            "model %r has no price on upstream %s: its cost is unknown (counted as unpriced "
            "requests); set it under `prices:` in the config file",
            model,
            ", ".join(repr(name) for name in lacking),
        )


async def serve(settings: Settings, *, with_envoy: bool = True) -> int:
    if with_envoy and settings.workers > 1:
        return await _serve_workers(settings)
    try:
        backend = await start_backend(settings)
    except ConfigError as exc:
        logger.error("bad config: %s", exc)
        return 1
    except SchemaTooNewError as exc:
        logger.error("%s", exc)
        return 1
    except RuntimeError as exc:
        logger.error(
            "gRPC server could not start on %s:%s: %s", settings.grpc_host, settings.grpc_port, exc
        )
        return 1
    # What is true of the whole gateway is said once: by its one backend, or its first worker.
    if not settings.worker_index:
        _warn_missing_keys(backend)
        _warn_unpriced(backend, settings.models)
    _freeze_startup_heap()
    if settings.admin_token is None:
        logger.info("admin API off: set GATEWAY_ADMIN_KEY to manage keys over REST and gRPC")
    with tempfile.TemporaryDirectory(prefix="typegpt-gateway-") as workdir:
        config_path = Path(workdir) / "envoy.yaml"
        envoy_admin = EnvoyAdmin(admin_address_file(config_path)) if with_envoy else None
        try:
            metrics = _start_metrics(settings, envoy_admin)
        except OSError as exc:
            _log_metrics_failure(settings, exc)
            await backend.stop(0)
            return 1
        try:
            return await _supervise(settings, backend, config_path, envoy_admin)
        finally:
            if metrics is not None:
                metrics.close()


async def _serve_workers(settings: Settings) -> int:
    """`serve` with several workers: no backend in this process, the workers (workers.py)
    behind Envoy, which also carries the direct gRPC port; /metrics merges the workers'."""
    try:
        read_config(settings)  # a bad upstreams file: one message, before any worker starts
    except ConfigError as exc:
        logger.error("bad config: %s", exc)
        return 1
    # Before any worker exists: a SIGTERM during start-up must not leave workers behind.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info("starting %d workers", settings.workers)
    pool = WorkerPool(settings)
    try:
        await pool.start()
    except WorkerStartError as exc:
        logger.error("%s", exc)
        return 1
    if stop.is_set():
        await pool.stop(settings.drain_timeout)
        return 0
    with tempfile.TemporaryDirectory(prefix="typegpt-gateway-") as workdir:
        config_path = Path(workdir) / "envoy.yaml"
        envoy_admin = EnvoyAdmin(admin_address_file(config_path))
        try:
            metrics = _start_metrics(settings, envoy_admin, pool.metrics_urls)
        except OSError as exc:
            _log_metrics_failure(settings, exc)
            await pool.stop(0)
            return 1

        async def drain() -> None:
            logger.info(
                "draining: refusing new requests; every worker's in-flight ones get up to %gs",
                settings.drain_timeout,
            )
            if not await envoy_admin.stop_listening():
                logger.warning("could not close Envoy's listeners; stopping the workers anyway")
            await pool.stop(settings.drain_timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE):
                    await envoy_admin.wait_idle()

        async def abort() -> None:
            await pool.stop(STOP_GRACE)

        try:
            config = render_config(settings, worker_ports=pool.grpc_ports)
            code, waits = await _run_envoy(
                settings,
                config,
                config_path,
                envoy_admin,
                stop,
                drain,
                abort,
                grpc_port=settings.grpc_port,
                workers=settings.workers,
            )
        finally:
            if metrics is not None:
                metrics.close()
    _report_leftovers(*waits)
    return code


def _freeze_startup_heap() -> None:
    """Takes what startup made (modules, gRPC's and aiohttp's state, the key cache) out of
    the garbage collector's sight, and collects young objects less often. A request leaves
    few cycles behind, but without this each collection walks the whole startup heap: about
    70 µs of CPU per request under load (bench/run.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _log_metrics_failure(settings: Settings, exc: OSError) -> None:
    logger.error(
        "metrics server could not start on %s:%s: %s (pick another --metrics-port, "
        "or 0 to turn metrics off)",
        settings.metrics_host,
        settings.metrics_port,
        exc,
    )


def _start_metrics(
    settings: Settings, envoy_admin: EnvoyAdmin | None, workers: Sequence[str] = ()
) -> MetricsServer | None:
    if settings.metrics_port == 0:
        return None
    envoy_stats = envoy_admin.prometheus_stats if envoy_admin is not None else None
    metrics = MetricsServer(
        settings.metrics_host, settings.metrics_port, envoy_stats, workers=workers
    )
    logger.info(
        "metrics on http://%s:%s/metrics (Envoy's at /metrics/envoy)",
        _url_host(settings.metrics_host),
        metrics.port,
    )
    return metrics


async def _supervise(
    settings: Settings, backend: Backend, config_path: Path, envoy_admin: EnvoyAdmin | None
) -> int:
    refresher = asyncio.create_task(backend.keys.run_refresher())
    backend.tasks.append(refresher)  # stopped by Backend.stop, before the store it reads closes
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    if envoy_admin is None:
        logger.info(
            "gRPC backend serving on %s:%s (no Envoy here)", settings.grpc_host, backend.port
        )
        await stop.wait()
        await _drain(backend, settings, None)
        _report_leftovers(refresher)
        return 0

    config = render_config(settings, grpc_port=backend.local_port)

    async def drain() -> None:
        await _drain(backend, settings, envoy_admin)

    async def abort() -> None:
        await backend.stop(STOP_GRACE)

    code, waits = await _run_envoy(
        settings, config, config_path, envoy_admin, stop, drain, abort, grpc_port=backend.port
    )
    _report_leftovers(refresher, *waits)
    return code


async def _run_envoy(
    settings: Settings,
    config: str,
    config_path: Path,
    envoy_admin: EnvoyAdmin,
    stop: asyncio.Event,
    drain: Callable[[], Awaitable[None]],
    abort: Callable[[], Awaitable[None]],
    *,
    grpc_port: int,
    workers: int = 1,
) -> tuple[int, tuple[asyncio.Task[object], ...]]:
    """Runs Envoy in front of the backend until `stop` is set (then `drain`, and Envoy stops)
    or Envoy exits (then `abort`, and the exit code is 1). Returns the exit code and the tasks
    it made, for _report_leftovers."""
    await asyncio.to_thread(config_path.write_text, config)
    envoy = await start_envoy(settings, config_path)
    assert envoy.stdout is not None
    relay = asyncio.create_task(relay_output(envoy.stdout))
    scheme = "https" if settings.tls_cert is not None else "http"
    base = f"{scheme}://{_url_host(connect_host(settings))}:{settings.http_port}"
    if await _wait_until_healthy(f"{base}/healthz", envoy) and not stop.is_set():
        logger.info(
            "typegpt-gateway ready with %d worker%s: POST %s/v1/chat/completions (OpenAI "
            "base URL %s/v1); gRPC on %s:%s; listening on %s",
            workers,
            "" if workers == 1 else "s",
            base,
            base,
            settings.grpc_host,
            grpc_port,
            settings.host,
        )
    elif envoy.returncode is None:
        logger.error("gateway did not become healthy within %.0fs", READY_TIMEOUT)
        stop.set()

    stopped = asyncio.create_task(stop.wait())
    envoy_exit = asyncio.create_task(envoy.wait())
    await asyncio.wait((stopped, envoy_exit), return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if envoy_exit.done():
        logger.error("Envoy exited with code %s; stopping the gateway", envoy.returncode)
        code = 1
        await abort()
    else:
        await drain()
        logger.info("stopping Envoy")
        envoy.terminate()
        try:
            await asyncio.wait_for(envoy_exit, STOP_GRACE)
        except TimeoutError:
            envoy.kill()
            await envoy_exit
    stopped.cancel()
    await relay  # Envoy has exited: its last lines are in the pipe
    return code, (stopped, envoy_exit)
