"""The gRPC side of the gate: a server interceptor that checks every call before its handler.

Methods map to Triton's ``--grpc-restricted-protocol`` groups (``grpc.health.v1`` is health,
reflection is metadata). The model comes from the request message; on ModelStreamInfer every
message is checked (and rate limited) as it arrives, and a refused one ends the stream with
the refusal's status once the requests already in flight have answered. Refusals are
UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED (with ``retry-after`` trailing
metadata); a Triton restriction is UNAVAILABLE, as in Triton.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import unquote

import grpc

from nereid.proto import grpc_service_pb2 as pb
from nereid.server.auth import ApiGroup
from nereid.server.errors import RateLimited, ServingError
from nereid.server.gate import Gate
from nereid.server.grpc.errors import GRPC_STATUS
from nereid.server.ratelimit import token_charge

_SERVICE = "/inference.GRPCInferenceService/"
METHOD_GROUPS: dict[str, ApiGroup] = {
    **{
        _SERVICE + name: group
        for group, names in {
            ApiGroup.HEALTH: ("ServerLive", "ServerReady", "ModelReady"),
            ApiGroup.METADATA: ("ServerMetadata", "ModelMetadata"),
            ApiGroup.INFERENCE: ("ModelInfer", "ModelStreamInfer"),
            ApiGroup.MODEL_CONFIG: ("ModelConfig",),
            ApiGroup.STATISTICS: ("ModelStatistics",),
            ApiGroup.MODEL_REPOSITORY: ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
            ApiGroup.SHARED_MEMORY: tuple(
                f"{kind}SharedMemory{op}"
                for kind in ("System", "Cuda")
                for op in ("Status", "Register", "Unregister")
            ),
            ApiGroup.TRACE: ("TraceSetting",),
            ApiGroup.LOGGING: ("LogSettings",),
        }.items()
        for name in names
    },
    "/grpc.health.v1.Health/Check": ApiGroup.HEALTH,
    "/grpc.health.v1.Health/Watch": ApiGroup.HEALTH,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ApiGroup.METADATA,
}
# The request field that names the model, where the message has one.
_MODEL_FIELD = {
    "ModelReady": "name",
    "ModelMetadata": "name",
    "ModelConfig": "name",
    "ModelStatistics": "name",
}
_LLM_INPUTS = ("text_input", "prompt")


def _message(method: str, request: Any) -> Any:
    """The request as a message: the inference service's handlers take raw bytes (see
    ``server/grpc/registration.py``), so the guard parses its own copy to read the model and
    prompt; bytes that do not parse are left for the handler to refuse (INVALID_ARGUMENT)."""
    if not isinstance(request, bytes):
        return request
    service, _, name = method.rpartition("/")
    if service != _SERVICE.rstrip("/"):
        return None
    method_desc = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name.get(name)
    if method_desc is None:
        return None
    message = getattr(pb, method_desc.input_type.name)()
    try:
        message.ParseFromString(request)
    except Exception:
        return None
    return message


def _model(method: str, request: Any) -> str:
    name = method.rpartition("/")[2]
    field = _MODEL_FIELD.get(name, "model_name")
    value = getattr(request, field, "")
    return value if isinstance(value, str) else ""


def _tokens(request: Any) -> int:
    """The admission charge of a ModelInferRequest that carries an LLM prompt, else 0."""
    prompt = 0
    found = False
    sampling: dict[str, Any] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in _LLM_INPUTS:
            found = True
            if index < len(request.raw_input_contents):
                prompt += max(0, len(request.raw_input_contents[index]) - 4)  # minus the length prefix
            else:
                prompt += sum(len(b) for b in tensor.contents.bytes_contents)
        elif tensor.name == "sampling_parameters" and tensor.contents.bytes_contents:
            try:
                loaded = json.loads(tensor.contents.bytes_contents[0])
            except ValueError:
                loaded = None
            sampling = loaded if isinstance(loaded, dict) else {}
    if not found:
        return 0
    limit = sampling.get("max_tokens")
    if "max_tokens" in request.parameters:
        limit = request.parameters["max_tokens"].int64_param
    return token_charge(prompt, limit if isinstance(limit, int) and not isinstance(limit, bool) else None)


def _headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {
        key: value if isinstance(value, str) else value.decode("latin-1")
        for key, value in context.invocation_metadata() or ()
    }


def _address(context: grpc.aio.ServicerContext) -> str:
    """The peer's host as HTTP names it ("ipv4:10.0.0.1:5000" -> "10.0.0.1", "ipv6:%5B::1%5D:5" -> "::1")."""
    peer = context.peer()
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    return unquote(rest.rpartition(":")[0]).strip("[]")


async def _refuse(context: grpc.aio.ServicerContext, error: ServingError) -> NoReturn:
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, RateLimited):
        trailing = (("retry-after", str(max(1, math.ceil(error.retry_after_s)))),)
    await context.abort(GRPC_STATUS[error.code], error.message, trailing_metadata=trailing)
    raise AssertionError("context.abort returned")


class GrpcGuard(grpc.aio.ServerInterceptor):
    """Wraps each method handler with :meth:`Gate.check`."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        group = METHOD_GROUPS.get(method, ApiGroup.INFERENCE)
        wrap = {
            "unary_unary": (self._unary_unary, grpc.unary_unary_rpc_method_handler),
            "unary_stream": (self._unary_stream, grpc.unary_stream_rpc_method_handler),
            "stream_stream": (self._stream_stream, grpc.stream_stream_rpc_method_handler),
        }
        for kind, (wrapper, make) in wrap.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(
                    wrapper(behavior, method, group),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler  # client streaming: not used by any service here

    def _check(self, context: Any, group: ApiGroup, model: str, tokens: int = 0, count: bool = True) -> None:
        self.gate.check(_headers(context), _address(context), group, model, tokens, count)

    def _unary_unary(self, behavior: Any, method: str, group: ApiGroup) -> Any:
        infer = group is ApiGroup.INFERENCE

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            message = _message(method, request)
            try:
                self._check(
                    context, group, _model(method, message), _tokens(message) if infer and message else 0
                )
            except ServingError as error:
                await _refuse(context, error)
            return await behavior(request, context)

        return call

    def _unary_stream(self, behavior: Any, method: str, group: ApiGroup) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                self._check(context, group, _model(method, request))
            except ServingError as error:
                await _refuse(context, error)
            async for response in behavior(request, context):
                yield response

        return call

    def _stream_stream(self, behavior: Any, method: str, group: ApiGroup) -> Any:
        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                self._check(context, group, "", count=group is not ApiGroup.INFERENCE)
            except ServingError as error:
                await _refuse(context, error)
            refused: list[ServingError] = []
            source = (
                self._checked(requests, context, group, refused) if group is ApiGroup.INFERENCE else requests
            )
            async for response in behavior(source, context):
                yield response
            if refused:
                await _refuse(context, refused[0])

        return call

    async def _checked(
        self, requests: AsyncIterator[Any], context: Any, group: ApiGroup, refused: list[ServingError]
    ) -> AsyncIterator[Any]:
        """The stream's messages, each checked; stops at the first refused one."""
        async for raw in requests:
            message = _message(_SERVICE + "ModelStreamInfer", raw)
            try:
                self._check(
                    context, group, message.model_name if message else "", _tokens(message) if message else 0
                )
            except ServingError as error:
                refused.append(error)
                return
            yield raw
