"""Assembles the gRPC server: the gateway's services, grpc.health.v1 and reflection."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc, status_pb2, status_pb2_grpc

from .catalog import Catalog
from .chat import ChatPipeline
from .failover import Failover
from .servicer import ChatServicer, ReadinessProbe, StatusServicer
from .settings import MiB, Settings
from .store import KeyCache, KeyStore

logger = logging.getLogger(__name__)

# After the drain time, how long streams get to write their error frame before being cut.
LAST_WORDS = 1.0

SERVICE_NAMES = (
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
)


@dataclass
class Backend:
    server: grpc.aio.Server
    keys: KeyCache
    upstreams: Failover
    pipeline: ChatPipeline
    store: KeyStore
    health: health.aio.HealthServicer
    readiness: ReadinessProbe
    port: int

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
        await self.upstreams.aclose()
        self.store.close()


async def start_backend(settings: Settings) -> Backend:
    """Starts the gRPC server on settings.grpc_host:grpc_port (port 0: any free port)."""
    upstreams = Failover.from_settings(settings)
    store = KeyStore(settings.db)
    keys = KeyCache(store, settings.key_refresh_interval)
    catalog = Catalog(
        settings.models, owned_by=settings.models_owned_by, created=settings.models_created
    )
    pipeline = ChatPipeline(keys, catalog, upstreams, keepalive=settings.sse_keepalive_interval)
    readiness = ReadinessProbe()

    # Room for a whole 32 MiB body plus the protobuf framing around it.
    message_limit = settings.max_body_bytes + MiB
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(pipeline, catalog), server)
    status_pb2_grpc.add_StatusServiceServicer_to_server(StatusServicer(readiness), server)
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
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Backend(server, keys, upstreams, pipeline, store, health_servicer, readiness, port)
