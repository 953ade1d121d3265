"""Stage notes made by worker threads for traced requests (called only when a request has a trace)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nereid.server.tracing.context import StageEvent

if TYPE_CHECKING:
    from nereid.server.types import InferRequest


def note_batch(
    traced: list[InferRequest],
    request_count: int,
    rows: int,
    phases: tuple[int, int, int],
    end_ns: int,
) -> None:
    """One executed batch: a ``batch`` span per traced request, linked to the batch's other traced
    requests, with ``compute_input`` / ``compute_infer`` / ``compute_output`` children laid end to end
    before ``end_ns`` (the backend reports phase durations, not their instants)."""
    input_ns, infer_ns, output_ns = phases
    infer_end = end_ns - output_ns
    input_end = infer_end - infer_ns
    start = input_end - input_ns
    members = [(r.trace.trace_id, r.trace.span_id) for r in traced if r.trace is not None]
    for request in traced:
        trace = request.trace
        if trace is None:
            continue
        own = (trace.trace_id, trace.span_id)
        attributes = {"nereid.batch.size": rows, "nereid.batch.requests": request_count}
        links = tuple(m for m in members if m != own)
        trace.stage(StageEvent("batch", request.dispatch_ns or start, end_ns, attributes, links=links))
        trace.stage(StageEvent("compute_input", start, input_end, parent="batch"))
        trace.stage(StageEvent("compute_infer", input_end, infer_end, parent="batch"))
        trace.stage(StageEvent("compute_output", infer_end, end_ns, parent="batch"))


def note_llm(
    request: InferRequest, first_token_ns: int, end_ns: int, prompt_tokens: int, generated: int, reason: str
) -> None:
    """An LLM request's phases: waiting for the engine, prefill (until the first token), decode."""
    trace = request.trace
    if trace is None:
        return
    submitted = request.dispatch_ns or request.arrival_ns
    admitted = trace.marks.get("llm.admit", submitted)
    first = first_token_ns or end_ns
    trace.stage(StageEvent("llm.queue", submitted, admitted))
    trace.stage(StageEvent("llm.prefill", admitted, first, {"nereid.llm.prompt_tokens": prompt_tokens}))
    trace.stage(
        StageEvent(
            "llm.decode",
            first,
            end_ns,
            {"nereid.llm.generation_tokens": generated, "nereid.llm.finish_reason": reason},
        )
    )
