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

_Response = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def _status(self, service: str) -> int:
        if service not in SERVICES:
            return _Response.SERVICE_UNKNOWN
        return _Response.SERVING if self.core.ready() else _Response.NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return _Response(status=self._status(request.service))

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The current status, then each change (polled: readiness has no change events)."""
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                last = status
                yield _Response(status=status)
            await asyncio.sleep(WATCH_INTERVAL_S)
