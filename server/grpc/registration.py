"""Registers GRPCInferenceService with request parsing inside the handlers.

With generated registration, grpc.aio parses each request before the handler runs and
answers a message it cannot parse (bad bytes, names that are not UTF-8) with UNKNOWN or
INTERNAL, or, on a stream, ends the call with OK and drops what follows. Here gRPC hands the
handlers raw bytes: a unary call that cannot be parsed ends with INVALID_ARGUMENT, and a
stream passes the bytes to :class:`~nereid.server.grpc.stream.StreamSession`, which answers a
bad message with its own error response and keeps serving the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from nereid.proto import grpc_service_pb2 as pb
from nereid.server.errors import InvalidArgument
from nereid.server.grpc.codec import parse
from nereid.server.grpc.service import Context, InferenceServicer, abort

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _unary(impl: Callable[[Any, Context], Awaitable[Any]], message_type: type[Message]) -> Any:
    async def handler(raw: bytes, context: Context) -> Any:
        try:
            request = parse(message_type, raw)
        except InvalidArgument as exc:
            await abort(context, exc)
        return await impl(request, context)

    return handler


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Serve every method of ``inference.GRPCInferenceService`` from ``servicer``."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        impl = getattr(servicer, method.name)
        if method.client_streaming:
            # The stream session parses each message itself (see the module docstring).
            stream: Callable[[AsyncIterator[bytes], Context], Any] = impl
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                stream, response_serializer=_serialize
            )
        else:
            message_type = getattr(pb, method.input_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(impl, message_type), response_serializer=_serialize
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
