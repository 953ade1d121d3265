"""The gRPC front-end: a grpc.aio server on the core's event loop.

It serves ``inference.GRPCInferenceService`` (:mod:`.service`), the standard health service
and server reflection. Messages larger than ``max_input_size`` are refused by gRPC itself
with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import functools
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from nereid.proto import grpc_service_pb2, model_config_pb2
from nereid.server.core import InferenceCore
from nereid.server.gate import Gate
from nereid.server.grpc.access import AccessLog
from nereid.server.grpc.guard import GrpcGuard
from nereid.server.grpc.health import HealthServicer
from nereid.server.grpc.registration import add_inference_service
from nereid.server.grpc.service import InferenceServicer
from nereid.server.settings import DEFAULT_MAX_INPUT_SIZE

INFERENCE_SERVICE = "inference.GRPCInferenceService"


@functools.cache
def reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every schema the server speaks, for reflection clients (grpcurl, Postman).

    Nereid's ``inference.*`` files live in the private ``nereid.proto._pool.POOL`` and the
    health and reflection files in protobuf's default pool; reflection takes one pool, so
    this one holds copies of all four (our ``inference.*``, never tritonclient's).
    """
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


class GrpcFrontend:
    """Owns the grpc.aio server; ``start`` and ``stop`` run on the core's event loop."""

    def __init__(
        self,
        core: InferenceCore,
        max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
        gate: Gate | None = None,
        credentials: grpc.ServerCredentials | None = None,
        access_log: bool = False,
    ) -> None:
        self.core = core
        self.max_input_size = max_input_size
        # Authentication, restricted protocols and rate limits, checked before every handler.
        self.gate = gate
        # TLS (and, with client certificates required, mTLS); None serves plaintext.
        self.credentials = credentials
        # --log-access: one nereid.access line per call.
        self.access_log = access_log
        self._server: grpc.aio.Server | None = None

    async def start(self, address: str, port: int) -> int:
        """Listen on ``address:port`` (0 picks a free port) and return the bound port."""
        interceptors: list[grpc.aio.ServerInterceptor] = [AccessLog()] if self.access_log else []
        if self.gate is not None and self.gate.enabled:
            interceptors.append(GrpcGuard(self.gate))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", self.max_input_size),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        # Requests are parsed in the handlers, so a bad message is INVALID_ARGUMENT (registration.py).
        add_inference_service(InferenceServicer(self.core), server)
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(self.core), server)
        names = (
            INFERENCE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server, pool=reflection_pool())
        host = f"[{address}]" if ":" in address and not address.startswith("[") else address
        try:
            if self.credentials is not None:
                bound = server.add_secure_port(f"{host}:{port}", self.credentials)
            else:
                bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {host}:{port}: {exc}") from None
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        await server.start()
        self._server = server
        return bound

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give running ones ``grace`` seconds, then cancel the rest."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


def server_credentials(cert: str, key: str, root: str = "", mutual: bool = False) -> grpc.ServerCredentials:
    """TLS credentials from PEM files (Triton's --grpc-server-cert/-key/--grpc-root-cert).

    With ``mutual`` a client must present a certificate signed by ``root``.
    """
    pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    roots = Path(root).read_bytes() if root else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=mutual)
