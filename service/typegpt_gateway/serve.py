"""`typegpt-gateway serve`: the gRPC backend in this process, Envoy beside it, both supervised.

Either one dying ends the other with a clear log line and a non-zero exit; SIGINT/SIGTERM
stop both and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
import time
from pathlib import Path

import httpx

from .envoy import connect_host, relay_output, render_config, start_envoy
from .server import start_backend
from .settings import Settings

logger = logging.getLogger("typegpt_gateway")

READY_TIMEOUT = 30.0
STOP_GRACE = 5.0


async def _wait_until_healthy(url: str, envoy: asyncio.subprocess.Process) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline and envoy.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.1)
    return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(settings: Settings, *, with_envoy: bool = True) -> int:
    if settings.upstream_key is None:
        logger.warning(
            "TYPEGPT_API_KEY is not set: the gateway starts, but every chat request will get "
            "503 'upstream API key is not configured' until it is set"
        )
    try:
        backend = await start_backend(settings)
    except RuntimeError as exc:
        logger.error(
            "gRPC server could not start on %s:%s: %s", settings.grpc_host, settings.grpc_port, exc
        )
        return 1
    refresher = asyncio.create_task(backend.keys.run_refresher())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    if not with_envoy:
        logger.info(
            "gRPC backend serving on %s:%s (no Envoy here)", settings.grpc_host, backend.port
        )
        await stop.wait()
        logger.info("shutting down")
        refresher.cancel()
        await backend.stop(STOP_GRACE)
        return 0

    with tempfile.TemporaryDirectory(prefix="typegpt-gateway-") as workdir:
        config_path = Path(workdir) / "envoy.yaml"
        config_path.write_text(render_config(settings, grpc_port=backend.port))
        envoy = await start_envoy(settings, config_path)
        assert envoy.stdout is not None
        relay = asyncio.create_task(relay_output(envoy.stdout))
        base = f"http://{_url_host(connect_host(settings))}:{settings.http_port}"
        if await _wait_until_healthy(f"{base}/healthz", envoy) and not stop.is_set():
            logger.info(
                "typegpt-gateway ready: POST %s/v1/chat/completions (OpenAI base URL %s/v1); "
                "gRPC on %s:%s; listening on %s",
                base,
                base,
                settings.grpc_host,
                backend.port,
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
        else:
            logger.info("shutting down")
            envoy.terminate()
            try:
                await asyncio.wait_for(envoy_exit, STOP_GRACE)
            except TimeoutError:
                envoy.kill()
                await envoy_exit
        stopped.cancel()
        refresher.cancel()
        await backend.stop(STOP_GRACE)
        await relay  # Envoy has exited: its last lines are in the pipe
    return code
