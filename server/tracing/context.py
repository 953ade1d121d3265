"""The trace context that travels on a sampled :class:`~nereid.server.types.InferRequest`."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from nereid.server.errors import InvalidArgument

# version "00": 32 hex trace id, 16 hex parent id, 2 hex flags (W3C Trace Context, level 1).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_MAX_TRACESTATE = 512  # W3C: 32 list members; a longer header is refused rather than truncated


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def new_trace_id() -> int:
    return random.getrandbits(128) or 1


def parse_traceparent(value: str) -> tuple[int, int, int]:
    """``(trace_id, parent_span_id, flags)`` from a W3C ``traceparent``; InvalidArgument if malformed."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        raise InvalidArgument(
            "malformed traceparent header: expected '00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>'"
        )
    version, trace_hex, parent_hex, flags_hex = match.groups()
    if version == "ff":
        raise InvalidArgument("malformed traceparent header: version 'ff' is forbidden")
    trace_id, parent_id = int(trace_hex, 16), int(parent_hex, 16)
    if trace_id == 0 or parent_id == 0:
        raise InvalidArgument("malformed traceparent header: an all-zero trace id or parent id is invalid")
    return trace_id, parent_id, int(flags_hex, 16)


def check_tracestate(value: str) -> str:
    if len(value) > _MAX_TRACESTATE or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise InvalidArgument("malformed tracestate header: printable ASCII list of at most 512 characters")
    return value


@dataclass(slots=True)
class StageEvent:
    """A timed stage a worker thread reports for a traced request (monotonic ns)."""

    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    parent: str = ""  # the name of an earlier stage this one nests in; "" = the request span
    links: tuple[tuple[int, int], ...] = ()  # (trace_id, span_id) of related request spans


@dataclass(slots=True, eq=False)
class TraceContext:
    """One sampled request: its ids and the stages recorded for it (appended from any thread).

    ``start_ns`` (monotonic) is when the front-end began receiving and decoding the request.
    """

    trace_id: int
    span_id: int
    parent_span_id: int | None = None
    tracestate: str = ""
    level: str = "TIMESTAMPS"
    protocol: str = ""
    start_ns: int = field(default_factory=time.monotonic_ns)
    stages: list[StageEvent] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)  # named instants (monotonic ns) stages refer to

    @classmethod
    def start(
        cls, traceparent: str | None, tracestate: str | None, level: str, protocol: str
    ) -> TraceContext:
        if traceparent:
            trace_id, parent, _flags = parse_traceparent(traceparent)
            return cls(trace_id, new_span_id(), parent, check_tracestate(tracestate or ""), level, protocol)
        return cls(new_trace_id(), new_span_id(), None, "", level, protocol)

    def child(self, protocol: str = "internal") -> TraceContext:
        """A context for a request made on behalf of this one (an ensemble step, a BLS call)."""
        return TraceContext(self.trace_id, new_span_id(), self.span_id, self.tracestate, self.level, protocol)

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` naming this request's span, to send back or pass downstream."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"

    def stage(self, event: StageEvent) -> None:
        self.stages.append(event)  # list.append is atomic: worker threads call this without a lock
