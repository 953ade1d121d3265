"""The standard ``grpc.health.v1.Health`` service: SERVING exactly when the core is ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nereid.server.core import InferenceCore

# "" is the whole server; the inference service answers under its own name too.
SERVICES = frozenset({"", "inference.GRPCInferenceService"})
WATCH_INTERVAL_S = 1.0

Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def _status(self) -> Status:
        return (
            health_pb2.HealthCheckResponse.SERVING
            if self.core.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=self._status())

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The current status, then each change (polled; readiness has no change events)."""
        last = None
        while True:
            status = (
                self._status()
                if request.service in SERVICES
                else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(WATCH_INTERVAL_S)
