"""The GRPCInferenceService servicer: decode, call the core, encode.

Every unary handler runs on the core's event loop; a ServingError becomes the gRPC status
from :data:`~nereid.server.grpc.errors.GRPC_STATUS`. When a client cancels a call, gRPC
cancels its handler task, which cancels the request in the core.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc

from nereid.proto import grpc_service_pb2 as pb
from nereid.proto import grpc_service_pb2_grpc
from nereid.server.core import InferenceCore
from nereid.server.errors import ServingError, Unsupported, as_serving_error
from nereid.server.grpc import codec
from nereid.server.grpc.errors import GRPC_STATUS
from nereid.server.grpc.observe import log_settings, observe, trace_setting
from nereid.server.grpc.stream import StreamSession
from nereid.server.lifecycle import load_parameters, unload_dependents

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context: TypeAlias = grpc.aio.ServicerContext
Handler = Callable[[Any, Req, Context], Awaitable[Resp]]

# Metadata a client sends to get a real gRPC status (and the stream closed) on a stream error.
GRPC_ERROR_HEADER = "triton_grpc_error"


async def abort(context: Context, error: ServingError) -> NoReturn:
    """End the call with ``error``'s gRPC status (``context.abort`` always raises)."""
    await context.abort(GRPC_STATUS[error.code], error.message)
    raise AssertionError("context.abort returned")


def _unary(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn ServingError (and any unexpected exception) into the call's gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await abort(context, exc)
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            await abort(context, as_serving_error(exc))

    return wrapper


def _unimplemented(feature: str) -> Handler[Any, Any]:
    @_unary
    async def handler(self: Any, request: Any, context: Context) -> Any:
        raise Unsupported(f"{feature} is not supported by this server")

    return handler


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 / Triton ``inference.GRPCInferenceService`` over one :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    # ---- health and metadata ---------------------------------------------------------------

    @_unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.core.live())

    @_unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready())

    @_unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    @_unary
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return codec.encode_server_metadata(self.core.server_metadata())

    @_unary
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        return codec.encode_model_metadata(self.core.model_metadata(request.name, request.version))

    @_unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.core.model_config(request.name, request.version))

    @_unary
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        stats = self.core.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[codec.encode_statistics(s) for s in stats])

    # ---- inference ---------------------------------------------------------------------------

    @_unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        shm = self.core.shared_memory
        infer_request = codec.decode_request(request, shm)
        sticky = self.core.router.sticky_header(request.model_name)
        if sticky:
            for key, value in context.invocation_metadata() or ():
                if key == sticky:
                    infer_request.parameters.setdefault(sticky, value)
        observe(self.core, context, infer_request)
        return codec.encode_response(await self.core.infer(infer_request), infer_request, shm)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        grpc_errors = any(
            key == GRPC_ERROR_HEADER and str(value).lower() == "true"
            for key, value in context.invocation_metadata() or ()
        )
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        session = StreamSession(self.core, metadata.get("traceparent"), metadata.get("tracestate"))
        session.start(request_iterator)
        try:
            while (item := await session.next()) is not None:
                message, error = item
                if error is not None and grpc_errors:
                    await abort(context, error)
                yield message
        finally:
            await session.close()

    # ---- repository --------------------------------------------------------------------------

    @_unary
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        return codec.encode_index(self.core.repository_index(request.ready))

    @_unary
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        load = load_parameters(_repository_parameters(request.parameters))
        if load.routing_action:
            self.core.routing_action(request.model_name, load.routing_action)
        else:
            await self.core.load_model(request.model_name, load.config, load.files)
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        params = _repository_parameters(request.parameters)
        await self.core.unload_model(request.model_name, unload_dependents(params))
        return pb.RepositoryModelUnloadResponse()

    @_unary
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: Context
    ) -> pb.TraceSettingResponse:
        return trace_setting(self.core, request)

    # ---- shared memory (nereid.server.shared_memory) -----------------------------------------

    @_unary
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        return codec.encode_shm_status(self.core.shared_memory.status(request.name))

    @_unary
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.core.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_unary
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.core.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_unary
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Context
    ) -> pb.CudaSharedMemoryStatusResponse:
        return codec.encode_cuda_shm_status(self.core.shared_memory.cuda_status(request.name))

    @_unary
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Context
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self.core.shared_memory.cuda_register(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    @_unary
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self.core.shared_memory.cuda_unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    @_unary
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Context) -> pb.LogSettingsResponse:
        return log_settings(request)


def _repository_parameters(params: Any) -> dict[str, object]:
    """``ModelRepositoryParameter`` values as plain Python values (bool, int, str, bytes)."""
    out: dict[str, object] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, choice) if choice else None
    return out
