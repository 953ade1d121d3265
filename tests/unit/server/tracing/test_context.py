"""W3C trace context parsing and the TraceContext a sampled request carries."""

from __future__ import annotations

import pytest

from nereid.server.errors import InvalidArgument
from nereid.server.tracing.context import TraceContext, check_tracestate, parse_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_valid_traceparent():
    trace_id, parent, flags = parse_traceparent(VALID)
    assert trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736 and parent == 0x00F067AA0BA902B7 and flags == 1


@pytest.mark.parametrize(
    "value",
    ["", "00", VALID[:-3], VALID + "-extra", VALID.upper(), "ff" + VALID[2:], "0g" + VALID[2:],
     "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
     VALID.replace("-", "_")],
)  # fmt: skip
def test_malformed_traceparent(value):
    with pytest.raises(InvalidArgument, match="traceparent"):
        parse_traceparent(value)


def test_tracestate_limits():
    assert check_tracestate("a=1,b=2") == "a=1,b=2"
    for bad in ("x" * 513, "a=1\nb=2"):
        with pytest.raises(InvalidArgument, match="tracestate"):
            check_tracestate(bad)


def test_context_continues_the_callers_trace():
    trace = TraceContext.start(VALID, "k=v", "TIMESTAMPS", "http")
    assert trace.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736 and trace.parent_span_id == 0x00F067AA0BA902B7
    assert trace.traceparent.startswith(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-"
    ) and trace.traceparent.endswith("-01")
    assert trace.span_id != trace.parent_span_id and trace.tracestate == "k=v"
    child = trace.child()
    assert child.trace_id == trace.trace_id and child.parent_span_id == trace.span_id


def test_context_without_a_caller_starts_a_trace():
    first, second = (TraceContext.start(None, None, "TIMESTAMPS", "grpc") for _ in range(2))
    assert first.parent_span_id is None and first.trace_id != second.trace_id
