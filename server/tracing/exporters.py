"""Where finished spans go: a JSON-lines file (Triton's ``trace_file``), OTLP, or memory (tests)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger(__name__)


def span_json(span: ReadableSpan) -> bytes:
    """One span as a compact JSON line, with the keys of the SDK's ``ReadableSpan.to_json``.

    Times are nanoseconds since the epoch; the resource is left out (it is the same on every line).
    """
    context, parent = span.context, span.parent
    entry: dict[str, Any] = {
        "name": span.name,
        "context": {
            "trace_id": f"0x{context.trace_id:032x}",
            "span_id": f"0x{context.span_id:016x}",
            "trace_state": context.trace_state.to_header() if context.trace_state else "",
        },
        "kind": str(span.kind),
        "parent_id": f"0x{parent.span_id:016x}" if parent is not None else None,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "status": {"status_code": span.status.status_code.name, "description": span.status.description},
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"0x{link.context.trace_id:032x}", "span_id": f"0x{link.context.span_id:016x}"}
            for link in span.links
        ],
    }
    return orjson.dumps(entry) + b"\n"


class FanOut(SpanExporter):
    """Hands every batch to several exporters, so one batch processor (one queue) serves them all."""

    def __init__(self, exporters: list[SpanExporter]) -> None:
        self.exporters = exporters

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        results = [exporter.export(spans) for exporter in self.exporters]
        ok = all(r == SpanExportResult.SUCCESS for r in results)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()


class JsonLinesExporter(SpanExporter):
    """Appends each span as one JSON object per line (:func:`span_json`).

    The path can change at run time (the trace settings API); the file is opened per export batch.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            path = self.path
            if not path:
                return SpanExportResult.SUCCESS
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                with open(path, "ab") as out:
                    out.write(b"".join(span_json(span) for span in spans))
            except OSError as exc:
                log.warning("cannot write traces to %s: %s", path, exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class MemoryExporter(SpanExporter):
    """Keeps the last ``limit`` spans in memory (tests, and a look from a debugger)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.spans: list[ReadableSpan] = []
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.spans.extend(spans)
            del self.spans[: -self.limit]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def otlp_exporter(url: str) -> SpanExporter:
    """OTLP over HTTP when ``opentelemetry-exporter-otlp-proto-http`` is installed (optional)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ValueError(
            "--trace-config opentelemetry,url=... needs the optional package "
            "opentelemetry-exporter-otlp-proto-http"
        ) from None
    return OTLPSpanExporter(endpoint=url)
