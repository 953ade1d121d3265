"""Build a finished request's OpenTelemetry spans from the timestamps its path kept.

Nothing here runs while the request is in flight: the front-end, queue, batcher and LLM driver
only note times (most of which they keep anyway), and :func:`request_spans` turns them into one
request span with a child per stage once the request has finished.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from nereid.server.tracing.context import StageEvent, TraceContext, new_span_id

if TYPE_CHECKING:
    from nereid.server.types import InferRequest

SCOPE = InstrumentationScope("nereid.server", "0.1.0")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _context(trace: TraceContext, span_id: int, state: TraceState | None) -> SpanContext:
    return SpanContext(trace.trace_id, span_id, is_remote=False, trace_flags=_SAMPLED, trace_state=state)


def _parent(trace: TraceContext, span_id: int) -> SpanContext:
    return SpanContext(trace.trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)


def request_spans(
    request: InferRequest,
    trace: TraceContext,
    model_version: str,
    error: str | None,
    resource: Resource,
    end_ns: int | None = None,
) -> list[ReadableSpan]:
    """The request span (server kind) and its stage children, in epoch nanoseconds."""
    end = end_ns or time.monotonic_ns()
    offset = time.time_ns() - time.monotonic_ns()  # monotonic -> epoch
    root_parent = (
        SpanContext(trace.trace_id, trace.parent_span_id, is_remote=True, trace_flags=_SAMPLED)
        if trace.parent_span_id
        else None
    )
    attributes: dict[str, Any] = {
        "nereid.model": request.model_name,
        "nereid.model_version": model_version,
        "nereid.request_id": request.id,
        "nereid.protocol": trace.protocol,
        "nereid.priority": request.priority,
    }
    if trace.level == "TENSORS":
        for tensor in request.inputs:
            attributes[f"nereid.input.{tensor.name}"] = f"{tensor.datatype}{list(tensor.shape)}"
    status = Status(StatusCode.ERROR, error) if error else Status(StatusCode.OK)
    state = TraceState.from_header([trace.tracestate]) if trace.tracestate else None
    spans = [
        ReadableSpan(
            "infer",
            context=_context(trace, trace.span_id, state),
            parent=root_parent,
            resource=resource,
            attributes=attributes,
            kind=SpanKind.SERVER,
            status=status,
            start_time=trace.start_ns + offset,
            end_time=end + offset,
            instrumentation_scope=SCOPE,
        )
    ]
    stages = [StageEvent("decode", trace.start_ns, request.arrival_ns)]
    if request.dispatch_ns:
        stages.append(StageEvent("queue", request.arrival_ns, request.dispatch_ns))
    stages.extend(trace.stages)
    ids: dict[str, int] = {}
    for stage in stages:
        span_id = ids[stage.name] = new_span_id()
        parent = ids.get(stage.parent, trace.span_id) if stage.parent else trace.span_id
        spans.append(
            ReadableSpan(
                stage.name,
                context=_context(trace, span_id, state),
                parent=_parent(trace, parent),
                resource=resource,
                attributes=stage.attributes,
                links=_links(stage.links) if stage.links else (),
                start_time=stage.start_ns + offset,
                end_time=max(stage.end_ns, stage.start_ns) + offset,
                instrumentation_scope=SCOPE,
            )
        )
    return spans


def _links(pairs: Sequence[tuple[int, int]]) -> list[Link]:
    return [Link(SpanContext(t, s, is_remote=False, trace_flags=_SAMPLED)) for t, s in pairs]
