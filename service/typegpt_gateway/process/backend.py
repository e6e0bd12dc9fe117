"""Assembles the gRPC server: the gateway's services, grpc.health.v1 and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from typegpt.gateway.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    console_pb2,
    console_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    routes_pb2,
    routes_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
)

from ..api import admin_auth
from ..api.access import ADMIN_KEY_SERVICE, CLIENT_KEY_SERVICES
from ..api.call_guard import CallGuard
from ..api.chat_service import ChatServicer
from ..api.console_service import ConsoleServicer
from ..api.key_service import KeyServicer
from ..api.route_service import RouteServicer
from ..api.status_service import Check, StatusServicer
from ..keystore.admin import KeyAdmin
from ..keystore.cache import KeyCache
from ..keystore.ledger import UsageLedger
from ..keystore.opening import open_store
from ..keystore.records import missing_key_error
from ..keystore.store import Store
from ..limits import Backend as LimiterBackend
from ..limits import InProcessBackend, Limiter, Spent
from ..pipeline.accounting import Accounting
from ..pipeline.catalog import Catalog
from ..pipeline.pipeline import Pipeline
from ..redaction import register_url_password
from ..settings import MiB, Settings
from ..upstream.failover import Failover
from ..upstream.prices import PriceList
from ..upstream.upstreams_file import model_routes, price_list, read_config
from .envoy_config import WORKER_HEALTH_SERVICE
from .readiness import ReadinessProbe, key_store_check, rate_limits_check

logger = logging.getLogger(__name__)

METADATA_LIMIT = 64 * 1024
# After the drain time, how long streams get to write their error frame before being cut.
LAST_WORDS = 1.0

SERVICE_NAMES = (
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    routes_pb2.DESCRIPTOR.services_by_name["RouteService"].full_name,
    status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    console_pb2.DESCRIPTOR.services_by_name["ConsoleService"].full_name,
)


@dataclass
class Backend:
    server: grpc.aio.Server
    keys: KeyCache
    upstreams: Failover
    pipeline: Pipeline
    store: Store
    health: health.aio.HealthServicer
    readiness: ReadinessProbe
    port: int
    accounting: Accounting
    # Where an Envoy on this host reaches the server: `port`, or a loopback port in the clear
    # when `port` has TLS.
    local_port: int
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def begin_drain(self) -> None:
        """Readiness and grpc.health turn not-ready, so that balancers stop sending."""
        self.readiness.draining = True
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Refuses new requests, lets running ones finish within `grace` seconds, then ends
        open streams with an error frame and cancels what is left."""
        await self.begin_drain()
        stopping = asyncio.ensure_future(self.server.stop(grace + LAST_WORDS))
        finished, _ = await asyncio.wait((stopping,), timeout=grace)
        if not finished and not self.pipeline.stopping.done():
            self.pipeline.stopping.set_result(None)
        await stopping
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.upstreams.aclose()
        await self.readiness.aclose()
        # Every request has ended and been counted: settle the limiter, write the ledger (the
        # writer task may have been cancelled in the middle of a write: close finishes it).
        await self.accounting.limiter.aclose()
        await self.accounting.ledger.close()
        self.store.close()


def _limiter_backend(settings: Settings) -> LimiterBackend:
    if settings.redis_url is None:
        return InProcessBackend()
    from ..limits.redis_backend import RedisBackend

    url = settings.redis_url.get_secret_value()
    register_url_password(url)
    return RedisBackend(url, timeout=settings.redis_timeout, cluster=settings.redis_cluster)


def _accounting(
    settings: Settings, store: Store, backend: LimiterBackend, prices: PriceList
) -> Accounting:
    async def budget_seed(name: str, since: dt.date) -> Spent:
        # After a restart (or a Redis that lost its data) a budget goes on from the ledger.
        rows = await asyncio.to_thread(store.usage, name, since)
        return Spent(
            sum(row.prompt_tokens + row.completion_tokens for row in rows),
            sum(row.cost_micro_usd for row in rows),
        )

    limiter = Limiter(
        backend,
        fail_open=settings.rate_limit_failure_mode == "open",
        budget_seed=budget_seed,
    )
    return Accounting(limiter, UsageLedger(store, settings.usage_flush_interval), prices)


def _readiness_checks(settings: Settings, store: Store, backend: LimiterBackend) -> list[Check]:
    checks = [key_store_check(store)]
    if settings.redis_url is not None:
        checks.append(rate_limits_check(backend))
    return checks


async def start_backend(settings: Settings) -> Backend:
    """Starts the gRPC server on settings.grpc_host:grpc_port (port 0: any free port)."""
    config = read_config(settings)
    upstreams = Failover.from_settings(settings, config)
    store = open_store(settings)
    keys = KeyCache(store, settings.key_refresh_interval)
    catalog = Catalog(
        settings.models,
        owned_by=settings.models_owned_by,
        created=settings.models_created,
        routes=model_routes(config),
    )
    limiter_backend = _limiter_backend(settings)
    accounting = _accounting(settings, store, limiter_backend, price_list(config))
    pipeline = Pipeline(
        keys,
        catalog,
        upstreams,
        accounting,
        keepalive=settings.sse_keepalive_interval,
        flush_interval=settings.stream_flush_interval,
        max_answer_bytes=settings.max_answer_bytes,
    )
    readiness = ReadinessProbe(*_readiness_checks(settings, store, limiter_backend))
    # The admin API writes through the server's own store: the key cache sees each change at
    # once (data_version counts this connection's writes too).
    admin = KeyAdmin(store, settings.models)

    # Room for a whole 32 MiB body plus the protobuf framing around it.
    message_limit = settings.max_body_bytes + MiB
    guard = CallGuard(
        {
            **dict.fromkeys(CLIENT_KEY_SERVICES, missing_key_error),
            ADMIN_KEY_SERVICE: lambda: admin_auth.missing_key_error(settings.admin_token),
        },
        # As long as Envoy gives a REST client to send its whole request.
        message_timeout=settings.request_body_timeout,
    )
    server = grpc.aio.server(
        interceptors=[guard],
        options=[
            # Each stream may hold a message of up to message_limit, so a connection's streams
            # are capped; Envoy keeps to the same cap and opens another connection for more.
            ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
            # Streams counted as HTTP/2 counts them. By default grpc also counts streams that
            # have ended but are not freed yet, and refused a busy Envoy's streams (503s).
            ("grpc.http.overload_protection", 0),
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            # Above what Envoy lets through (32 KiB of headers): gRPC's default 8 KiB would
            # refuse a client's large headers as RESOURCE_EXHAUSTED, a misleading 429.
            ("grpc.max_metadata_size", METADATA_LIMIT),
            ("grpc.absolute_max_metadata_size", METADATA_LIMIT),
            ("grpc.so_reuseport", 0),
        ],
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(
        ChatServicer(pipeline, catalog, log_bodies=settings.log_bodies), server
    )
    routes_pb2_grpc.add_RouteServiceServicer_to_server(
        RouteServicer(pipeline, log_bodies=settings.log_bodies), server
    )
    keys_pb2_grpc.add_KeyServiceServicer_to_server(
        KeyServicer(admin, settings.admin_token, keys), server
    )
    status_pb2_grpc.add_StatusServiceServicer_to_server(StatusServicer(readiness.problem), server)
    console_pb2_grpc.add_ConsoleServiceServicer_to_server(ConsoleServicer(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.grpc_tls_cert is not None and settings.grpc_tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(settings.grpc_tls_key.read_bytes(), settings.grpc_tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
        local_port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = local_port = server.add_insecure_port(address)
    await server.start()

    async def report_health(ready: bool) -> None:
        status: int = health_pb2.HealthCheckResponse.SERVING
        if not ready:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, status)

    await report_health(True)
    # Alive and not draining (enter_graceful_shutdown turns it NOT_SERVING): what Envoy asks
    # of each worker. Not readiness, which workers share (the key store, Redis): one worker's
    # passing doubt must not move its keys, and so their limits' counts, to another.
    await health_servicer.set(WORKER_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    ledger_writer = asyncio.create_task(accounting.ledger.run())
    health_watcher = asyncio.create_task(readiness.watch(report_health))
    return Backend(
        server,
        keys,
        upstreams,
        pipeline,
        store,
        health_servicer,
        readiness,
        port,
        accounting,
        local_port,
        [ledger_writer, health_watcher],
    )
