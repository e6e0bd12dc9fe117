"""Assembles the gRPC server: the gateway's services, grpc.health.v1 and reflection."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc, status_pb2, status_pb2_grpc

from .catalog import Catalog
from .chat import ChatPipeline
from .servicer import ChatServicer, ReadinessProbe, StatusServicer
from .settings import MiB, Settings
from .store import KeyCache, KeyStore
from .upstream import Upstream

logger = logging.getLogger(__name__)

METADATA_LIMIT = 64 * 1024
SERVICE_NAMES = (
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
)


@dataclass
class Backend:
    server: grpc.aio.Server
    keys: KeyCache
    upstream: Upstream
    store: KeyStore
    health: health.aio.HealthServicer
    readiness: ReadinessProbe
    port: int

    async def stop(self, grace: float) -> None:
        self.readiness.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.upstream.aclose()
        self.store.close()


async def start_backend(settings: Settings) -> Backend:
    """Starts the gRPC server on settings.grpc_host:grpc_port (port 0: any free port)."""
    store = KeyStore(settings.db)
    keys = KeyCache(store, settings.key_refresh_interval)
    upstream = Upstream(
        settings.typegpt_base_url,
        settings.upstream_key,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
    )
    catalog = Catalog(
        settings.models, owned_by=settings.models_owned_by, created=settings.models_created
    )
    pipeline = ChatPipeline(keys, catalog, upstream, keepalive=settings.sse_keepalive_interval)
    readiness = ReadinessProbe()

    # Room for a whole 32 MiB body plus the protobuf framing around it.
    message_limit = settings.max_body_bytes + MiB
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            # Above what Envoy lets through (32 KiB of headers): gRPC's default 8 KiB would
            # refuse a client's large headers as RESOURCE_EXHAUSTED, a misleading 429.
            ("grpc.max_metadata_size", METADATA_LIMIT),
            ("grpc.absolute_max_metadata_size", METADATA_LIMIT),
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
    return Backend(server, keys, upstream, store, health_servicer, readiness, port)
