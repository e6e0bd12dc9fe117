"""`serve --workers N`: N backend processes behind the one Envoy.

Each worker is `typegpt-gateway serve --no-envoy` on a loopback gRPC port (and a loopback
metrics port) picked here once, so that Envoy's static cluster keeps naming it across
restarts. A worker that dies is started again after a backoff; SIGTERM is passed on to every
worker, each drains as a single-process gateway does, and the pool waits for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..settings import Settings
from .children import end_with_parent
from .ports import free_ports

logger = logging.getLogger("typegpt_gateway")

WORKER_HOST = "127.0.0.1"
# A worker that ran this long before dying gets the first backoff again.
STABLE_AFTER = 30.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
# How long a worker may take to start serving.
START_TIMEOUT = 30.0
# After a worker's drain time: its last stream's error frames, then its ledger write.
STOP_GRACE = 10.0
# Settings a worker must not take from the gateway's environment: its ports are the pool's,
# and Envoy, not the worker, speaks TLS on the direct gRPC port.
_NOT_INHERITED = ("GATEWAY_GRPC_TLS_CERT", "GATEWAY_GRPC_TLS_KEY")


class WorkerStartError(Exception):
    """A worker did not start serving: the gateway cannot start."""


@dataclass
class Worker:
    index: int
    grpc_port: int
    metrics_port: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def metrics_url(self) -> str:
        return f"http://{WORKER_HOST}:{self.metrics_port}/metrics"


def worker_environment(
    settings: Settings, worker: Worker, environ: Mapping[str, str]
) -> dict[str, str]:
    """The gateway's environment, with what `serve`'s flags set (the key store, the upstreams
    file) and the worker's own ports."""
    env = {name: value for name, value in environ.items() if name not in _NOT_INHERITED}
    env.update(
        GATEWAY_DB=str(settings.db),
        GATEWAY_GRPC_HOST=WORKER_HOST,
        GATEWAY_GRPC_PORT=str(worker.grpc_port),
        GATEWAY_METRICS_HOST=WORKER_HOST,
        GATEWAY_METRICS_PORT=str(worker.metrics_port),
        GATEWAY_WORKERS="1",
        GATEWAY_WORKER_INDEX=str(worker.index),
    )
    if settings.config is not None:
        env["GATEWAY_CONFIG"] = str(settings.config)
    return env


class WorkerPool:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        own = (
            settings.http_port,
            settings.grpc_port,
            settings.metrics_port,
            settings.envoy_admin_port,
        )
        ports = iter(free_ports(2 * settings.workers, WORKER_HOST, avoid=own))
        # Metrics port 0 (off) holds for the workers too.
        self.workers = [
            Worker(i, next(ports), next(ports) if settings.metrics_port else 0)
            for i in range(settings.workers)
        ]
        self._keepers: list[asyncio.Task[None]] = []

    @property
    def grpc_ports(self) -> list[int]:
        return [worker.grpc_port for worker in self.workers]

    @property
    def metrics_urls(self) -> list[str]:
        return [worker.metrics_url for worker in self.workers if worker.metrics_port]

    async def start(self) -> None:
        """Starts every worker and returns once each serves; WorkerStartError when one does
        not (every worker is stopped then)."""
        try:
            await asyncio.gather(*(self._spawn(worker) for worker in self.workers))
            await asyncio.gather(*(self._wait_serving(worker) for worker in self.workers))
        except WorkerStartError:
            await self._terminate(STOP_GRACE)
            raise
        self._keepers = [asyncio.create_task(self._keep(worker)) for worker in self.workers]

    async def _spawn(self, worker: Worker) -> None:
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "typegpt_gateway",
            "serve",
            "--no-envoy",
            stdin=asyncio.subprocess.DEVNULL,
            env=worker_environment(self._settings, worker, os.environ),
            preexec_fn=end_with_parent,
        )
        worker.started = time.monotonic()
        logger.info(
            "worker %d started: pid %d, gRPC on %s:%d",
            worker.index,
            worker.process.pid,
            WORKER_HOST,
            worker.grpc_port,
        )

    async def _wait_serving(self, worker: Worker) -> None:
        assert worker.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        request = health_pb2.HealthCheckRequest()
        async with grpc.aio.insecure_channel(f"{WORKER_HOST}:{worker.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if worker.process.returncode is not None:
                    raise WorkerStartError(
                        f"worker {worker.index} exited with code {worker.process.returncode} "
                        "while starting"
                    )
                with contextlib.suppress(grpc.aio.AioRpcError):
                    # The stubs (types-grpcio-health-checking) leave out the methods.
                    reply = await stub.Check(request, timeout=1.0)  # type: ignore[attr-defined]
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.1)
        raise WorkerStartError(f"worker {worker.index} did not serve within {START_TIMEOUT:g}s")

    async def _keep(self, worker: Worker) -> None:
        """Starts the worker again whenever it exits, until the pool stops (cancels this)."""
        backoff = FIRST_BACKOFF
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if time.monotonic() - worker.started > STABLE_AFTER:
                backoff = FIRST_BACKOFF
            logger.error(
                "worker %d (pid %d) exited with code %s; starting it again in %gs",
                worker.index,
                worker.process.pid,
                code,
                backoff,
            )
            # A start that fails (no memory or processes left to fork) is tried again, on the
            # same backoff: the exited process has nothing more to wait for.
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                try:
                    await self._spawn(worker)
                    break
                except OSError as exc:
                    logger.error(
                        "worker %d could not be started: %s; trying again in %gs",
                        worker.index,
                        exc,
                        backoff,
                    )

    async def stop(self, drain_timeout: float) -> None:
        """Passes SIGTERM on to every worker and waits for each to finish its drain (within
        `drain_timeout` plus STOP_GRACE); a worker still running then is killed."""
        for keeper in self._keepers:
            keeper.cancel()
        for keeper in self._keepers:
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self._terminate(drain_timeout + STOP_GRACE)

    async def _terminate(self, patience: float) -> None:
        running = [
            worker.process
            for worker in self.workers
            if worker.process is not None and worker.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(process.wait()) for process in running]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=patience)
        for process in running:
            if process.returncode is None:
                logger.error("worker pid %d did not stop in time: killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if late:
            await asyncio.wait(late)
