"""Spans built at the end of a request from the timestamps its path kept."""

from __future__ import annotations

import numpy as np
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from nereid.server.tracing.context import TraceContext
from nereid.server.tracing.spans import request_spans
from nereid.server.tracing.stages import note_batch, note_llm
from nereid.server.types import InferRequest, Tensor

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _request(trace: TraceContext, model: str = "m") -> InferRequest:
    tensor = Tensor("INPUT0", "FP32", (1, 2), np.zeros((1, 2), np.float32))
    request = InferRequest(model, [tensor], id="r1", trace=trace, arrival_ns=trace.start_ns + 1000)
    request.dispatch_ns = request.arrival_ns + 5000
    return request


def test_request_span_with_stage_children_and_batch_links():
    first, second = (
        TraceContext.start(PARENT, None, "TENSORS", "http"),
        TraceContext.start(None, None, "TIMESTAMPS", "grpc"),
    )
    requests = [_request(first), _request(second)]
    end = requests[0].dispatch_ns + 9000
    note_batch(requests, 2, 2, (1000, 5000, 2000), end)
    spans = request_spans(requests[0], first, "1", None, Resource.create({}), end_ns=end + 100)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {
        "infer",
        "decode",
        "queue",
        "batch",
        "compute_input",
        "compute_infer",
        "compute_output",
    }
    root = by_name["infer"]
    assert root.kind == SpanKind.SERVER and root.parent.span_id == first.parent_span_id
    assert root.attributes["nereid.input.INPUT0"] == "FP32[1, 2]"  # TENSORS level
    assert root.status.status_code == StatusCode.OK
    for name in ("compute_input", "compute_infer", "compute_output"):
        assert by_name[name].parent.span_id == by_name["batch"].context.span_id
    assert by_name["compute_infer"].end_time - by_name["compute_infer"].start_time == 5000
    assert [link.context.span_id for link in by_name["batch"].links] == [second.span_id]
    assert by_name["queue"].end_time - by_name["queue"].start_time == 5000


def test_llm_phases_and_error_status():
    trace = TraceContext.start(None, None, "TIMESTAMPS", "http")
    request = _request(trace)
    trace.marks["llm.admit"] = request.dispatch_ns + 100
    note_llm(request, request.dispatch_ns + 700, request.dispatch_ns + 2000, 12, 5, "length")
    spans = {s.name: s for s in request_spans(request, trace, "1", "boom", Resource.create({}))}
    assert spans["llm.prefill"].attributes["nereid.llm.prompt_tokens"] == 12
    assert spans["llm.decode"].attributes == {
        "nereid.llm.generation_tokens": 5,
        "nereid.llm.finish_reason": "length",
    }
    assert spans["llm.queue"].end_time == spans["llm.prefill"].start_time
    assert spans["infer"].status.status_code == StatusCode.ERROR
