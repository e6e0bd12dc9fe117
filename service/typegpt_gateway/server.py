"""Assembles the gRPC server: the gateway's services, grpc.health.v1 and reflection."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from typegpt.gateway.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
)

from .catalog import Catalog
from .chat import ChatPipeline
from .keyadmin import KeyAdmin
from .keyservice import KeyServicer
from .readiness import ReadinessProbe, key_store_check
from .servicer import ChatServicer, StatusServicer
from .settings import MiB, Settings
from .store import KeyCache, KeyStore
from .upstream import Upstream

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
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
    admin: KeyAdmin
    # Where an Envoy on this host reaches the server: `port`, or a loopback port in the clear
    # when `port` has TLS.
    local_port: int

    async def stop(self, grace: float) -> None:
        self.readiness.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.upstream.aclose()
        self.store.close()
        self.admin.store.close()


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
    readiness = ReadinessProbe(key_store_check(settings.db))
    # Its own connection: the cache notices the admin's writes like any other process's.
    admin = KeyAdmin(KeyStore(settings.db), settings.models)

    # Room for a whole 32 MiB body plus the protobuf framing around it.
    message_limit = settings.max_body_bytes + MiB
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(
        ChatServicer(pipeline, catalog, log_bodies=settings.log_bodies), server
    )
    keys_pb2_grpc.add_KeyServiceServicer_to_server(
        KeyServicer(admin, settings.admin_token, keys), server
    )
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
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Backend(
        server, keys, upstream, store, health_servicer, readiness, port, admin, local_port
    )
