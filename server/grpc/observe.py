"""gRPC side of the Monitor stage: trace context and request id from metadata; the TraceSetting RPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nereid.proto import grpc_service_pb2 as pb
from nereid.server.log_settings import LOG_SETTINGS

if TYPE_CHECKING:
    import grpc

    from nereid.server.core import InferenceCore
    from nereid.server.types import InferRequest

MAX_REQUEST_ID = 256


def observe(core: InferenceCore, context: grpc.aio.ServicerContext, request: InferRequest) -> None:
    """Start ``request``'s trace when sampled and take ``x-request-id`` for a request without an id.

    A malformed ``traceparent`` is INVALID_ARGUMENT. The trace starts here, after the message was
    decoded by gRPC, so gRPC's own receive time is not in the decode span.
    """
    traceparent = tracestate = request_id = None
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            traceparent = str(value)
        elif key == "tracestate":
            tracestate = str(value)
        elif key == "x-request-id":
            request_id = str(value)[:MAX_REQUEST_ID]
    if request_id and not request.id:
        request.id = request_id
    if traceparent or core.tracing.active:
        request.trace = core.tracing.begin(request.model_name, traceparent, tracestate, "grpc")
        if request.trace is not None:
            request.trace.start_ns = request.arrival_ns
    echo = []
    if request_id:
        echo.append(("x-request-id", request_id))
    if request.trace is not None:
        echo.append(("traceparent", request.trace.traceparent))
    if echo:
        context.set_trailing_metadata(tuple(echo))


def trace_setting(core: InferenceCore, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
    """Apply the listed settings (a key with no values goes back to the global value), then answer."""
    model = request.model_name
    if model:
        core.model_config(model)  # NOT_FOUND for a model the server does not have
    if request.settings:
        values: dict[str, Any] = {}
        for key, setting in request.settings.items():
            given = list(setting.value)
            values[key] = None if not given else given if key == "trace_level" else given[0]
        core.tracing.update(model, values)
    wire = core.tracing.settings(model).to_wire()
    return pb.TraceSettingResponse(
        settings={
            key: pb.TraceSettingResponse.SettingValue(value=value if isinstance(value, list) else [value])
            for key, value in wire.items()
        }
    )


def log_settings(request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
    """Apply the listed settings (a key with no value is left as it is), then answer them all."""
    values: dict[str, Any] = {}
    for key, setting in request.settings.items():
        choice = setting.WhichOneof("parameter_choice")
        values[key] = getattr(setting, choice) if choice else None
    wire = LOG_SETTINGS.update(values) if values else LOG_SETTINGS.to_wire()
    value = pb.LogSettingsResponse.SettingValue
    return pb.LogSettingsResponse(
        settings={
            key: value(bool_param=v)
            if isinstance(v, bool)
            else value(uint32_param=v)
            if isinstance(v, int)
            else value(string_param=v)
            for key, v in wire.items()
        }
    )
