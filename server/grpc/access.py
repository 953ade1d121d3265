"""The gRPC side of the optional access log (``--log-access``): one ``nereid.access`` line per call.

A server interceptor times each call and logs its method, status code and duration with the
request and trace ids from the call's metadata, as the HTTP access log does for a request.
Streams log once, when the call ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from nereid.server.logs import log_access


def _ids(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            ids["request_id"] = str(value)
        elif key == "traceparent" and str(value).count("-") == 3:
            ids["trace_id"] = str(value).split("-")[1]
    return ids


def _status(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if failed else "OK"


class AccessLog(grpc.aio.ServerInterceptor):
    """Wraps unary and streaming handlers so each finished call is logged."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _unary(behavior: Any, method: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start, failed = time.perf_counter(), True
        try:
            response = await behavior(request, context)
            failed = False
            return response
        finally:
            log_access(
                "grpc", "POST", method, _status(context, failed), time.perf_counter() - start, _ids(context)
            )

    return call


def _stream(behavior: Any, method: str) -> Any:
    async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        start, failed = time.perf_counter(), True
        try:
            async for response in behavior(requests, context):
                yield response
            failed = False
        finally:
            log_access(
                "grpc", "POST", method, _status(context, failed), time.perf_counter() - start, _ids(context)
            )

    return call
