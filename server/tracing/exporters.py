"""Where finished spans go: a JSON-lines file (Triton's ``trace_file``), OTLP, or memory (tests)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger(__name__)


class JsonLinesExporter(SpanExporter):
    """Appends each span as one JSON object per line (OpenTelemetry's own JSON form of a span).

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
                with open(path, "a", encoding="utf-8") as out:
                    out.writelines(span.to_json(indent=None) + "\n" for span in spans)
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
