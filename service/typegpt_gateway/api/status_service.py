"""The status service: liveness (GET /healthz) and readiness (GET /readyz)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from typegpt.gateway.v1 import status_pb2, status_pb2_grpc

from ..errors import GatewayError
from .rpc import abort

# What is wrong with this process, or None when it is ready to serve.
Check = Callable[[], Awaitable[str | None]]


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    """Answers only once the backend is serving; Envoy's 503 covers the backend being down."""

    def __init__(self, readiness: Check) -> None:
        self._readiness = readiness

    async def GetHealth(
        self,
        request: status_pb2.GetHealthRequest,
        context: grpc.aio.ServicerContext[
            status_pb2.GetHealthRequest, status_pb2.GetHealthResponse
        ],
    ) -> status_pb2.GetHealthResponse:
        return status_pb2.GetHealthResponse(status="ok")

    async def GetReadiness(
        self,
        request: status_pb2.GetReadinessRequest,
        context: grpc.aio.ServicerContext[
            status_pb2.GetReadinessRequest, status_pb2.GetReadinessResponse
        ],
    ) -> status_pb2.GetReadinessResponse:
        problem = await self._readiness()
        if problem is not None:
            await abort(context, GatewayError(503, f"Not ready: {problem}", "api_error"))
        return status_pb2.GetReadinessResponse(status="ready")
