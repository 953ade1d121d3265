"""HTTP side of the Monitor stage: trace context and request id in, echoed out; trace settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nereid.server.errors import InvalidArgument
from nereid.server.log_settings import LOG_SETTINGS
from nereid.server.tracing.manager import wire_values

if TYPE_CHECKING:
    from nereid.server.core import InferenceCore
    from nereid.server.http.app import Request
    from nereid.server.tracing.context import TraceContext
    from nereid.server.types import InferRequest

MAX_REQUEST_ID = 256


def begin_trace(core: InferenceCore, request: Request, model: str) -> TraceContext | None:
    """The request's trace when it is sampled; a malformed ``traceparent`` is a 400 either way."""
    headers = request.headers
    if not core.tracing.active and "traceparent" not in headers:
        return None
    return core.tracing.begin(model, headers.get("traceparent"), headers.get("tracestate"), "http")


def adopt_request_id(request: Request, infer_request: InferRequest) -> None:
    """``X-Request-ID`` names a request whose body gave no v2 ``id``."""
    header = request.headers.get("x-request-id")
    if header and not infer_request.id:
        infer_request.id = header[:MAX_REQUEST_ID]


def echo_headers(request: Request, infer_request: InferRequest) -> list[tuple[bytes, bytes]]:
    """``X-Request-ID`` (when the client sent one or the id is header-safe) and ``traceparent``."""
    headers: list[tuple[bytes, bytes]] = []
    rid = request.headers.get("x-request-id") or infer_request.id
    if rid and len(rid) <= MAX_REQUEST_ID and rid.isascii() and rid.isprintable():
        headers.append((b"x-request-id", rid.encode()))
    if infer_request.trace is not None:
        headers.append((b"traceparent", infer_request.trace.traceparent.encode()))
    return headers


async def trace_setting(core: InferenceCore, request: Request, model: str) -> dict[str, Any]:
    """``GET`` answers the settings; ``POST`` applies a body of ``{key: value | null}`` first."""
    if model:
        core.model_config(model)  # 404 for a model the server does not have
    if request.method == "POST":
        return core.tracing.update(model, wire_values(await request.json())).to_wire()
    return core.tracing.settings(model).to_wire()


async def log_setting(request: Request) -> dict[str, Any]:
    """``GET`` answers the log settings; ``POST`` applies a body of ``{setting: value}`` first."""
    if request.method != "POST":
        return LOG_SETTINGS.to_wire()
    body = await request.json()
    if not isinstance(body, dict):
        raise InvalidArgument("the log settings request must be a JSON object")
    return LOG_SETTINGS.update(body)
