"""The tracer of one server: sampling, run-time settings (global and per model), export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from nereid.server.errors import InvalidArgument
from nereid.server.tracing import settings as ts
from nereid.server.tracing.context import TraceContext, parse_traceparent
from nereid.server.tracing.exporters import FanOut, JsonLinesExporter, MemoryExporter, otlp_exporter
from nereid.server.tracing.settings import TraceSettings
from nereid.server.tracing.spans import request_spans

if TYPE_CHECKING:
    from nereid.server.types import InferRequest

log = logging.getLogger(__name__)


class TraceManager:
    """Decides which requests are traced and exports their spans once they finish.

    ``active`` is False while no scope traces anything, so front-ends skip tracing with one
    attribute read. Sampling counters and settings change only on the event loop.
    """

    def __init__(self, flags: list[str] | None = None, service_name: str = "nereid") -> None:
        updates, options = ts.parse_flags(flags or [])
        startup_file = str(updates.get("trace_file") or "")
        folder = options.get("dir") or (str(Path(startup_file).parent) if startup_file else "")
        self.allowed_dir: Path | None = Path(folder).resolve() if folder else None
        self.defaults = ts.apply(
            TraceSettings(), ts.parse_updates(updates, self.allowed_dir), TraceSettings()
        )
        self.global_settings = self.defaults
        self.models: dict[str, dict[str, Any]] = {}  # per-model overrides, as set through the API
        self._effective: dict[str, TraceSettings] = {}
        self._seen: dict[str, int] = {}
        self._remaining: dict[str, int] = {}
        attributes = {"service.name": service_name}
        for pair in filter(None, options.get("resource", "").split(";")):
            key, _, value = pair.partition("=")
            attributes[key.strip()] = value.strip()
        self.resource = Resource.create(attributes)
        self.file = JsonLinesExporter(self.defaults.trace_file)
        self.memory = MemoryExporter()
        exporters: list[SpanExporter] = [self.file, self.memory]
        if options.get("url"):
            exporters.append(otlp_exporter(options["url"]))
        # One queue for all exporters; sized for bursts (each traced request is about seven spans).
        self._processor = BatchSpanProcessor(
            FanOut(exporters),
            max_queue_size=int(options.get("bsp_max_queue_size", "65536")),
            schedule_delay_millis=int(options.get("bsp_schedule_delay", "200")),
            max_export_batch_size=int(options.get("bsp_max_export_batch_size", "2048")),
        )
        self.active = False
        self._refresh()

    # ---- settings (the trace extension) --------------------------------------------------------

    def settings(self, model: str = "") -> TraceSettings:
        return self._effective.get(model, self.global_settings) if model else self.global_settings

    def update(self, model: str, values: dict[str, Any]) -> TraceSettings:
        """Apply a ``POST .../trace/setting`` body; all keys are checked before any is applied."""
        updates = ts.parse_updates(values, self.allowed_dir)
        if model and "trace_file" in updates:
            raise InvalidArgument("trace_file is one for the whole server; set it without a model")
        if model:
            merged = {**self.models.get(model, {}), **updates}
            self.models[model] = {k: v for k, v in merged.items() if v is not None}
        else:
            self.global_settings = ts.apply(self.global_settings, updates, self.defaults)
            if "trace_file" in updates:
                self.file.path = self.global_settings.trace_file
        for scope in (model, *([] if model else self.models)):
            self._remaining.pop(scope, None)
        self._refresh()
        return self.settings(model)

    def _refresh(self) -> None:
        self._effective = {
            name: ts.apply(self.global_settings, over, self.defaults) for name, over in self.models.items()
        }
        scopes = [self.global_settings, *self._effective.values()]
        self.active = any(s.enabled for s in scopes)

    # ---- the request path --------------------------------------------------------------------

    def begin(
        self, model: str, traceparent: str | None, tracestate: str | None, protocol: str
    ) -> TraceContext | None:
        """A context when this request is sampled, else None; a malformed ``traceparent`` is refused."""
        if not self.active:
            if traceparent:
                parse_traceparent(traceparent)  # refuse garbage even when not tracing
            return None
        scope = model if model in self._effective else ""
        current = self._effective.get(model, self.global_settings)
        if not current.enabled:
            if traceparent:
                parse_traceparent(traceparent)
            return None
        seen = self._seen.get(scope, 0)
        self._seen[scope] = seen + 1
        if seen % current.trace_rate:
            if traceparent:
                parse_traceparent(traceparent)
            return None
        if current.trace_count > 0:
            left = self._remaining.setdefault(scope, current.trace_count)
            if left <= 0:
                return None
            self._remaining[scope] = left - 1
        return TraceContext.start(traceparent, tracestate, current.trace_level[0], protocol)

    def finish(self, request: InferRequest, model_version: str, error: str | None) -> None:
        """Export a traced request's spans (called once, when the request has finished)."""
        trace = request.trace
        if trace is None:
            return
        try:
            spans = request_spans(request, trace, model_version, error, self.resource)
        except Exception:  # tracing must never fail a request
            log.exception("could not build the spans of request '%s'", request.id)
            return
        for span in spans:
            self._processor.on_end(span)

    def flush(self, timeout_ms: int = 5000) -> None:
        self._processor.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self._processor.shutdown()


def wire_values(body: Any) -> dict[str, Any]:
    """The settings of an HTTP ``POST .../trace/setting`` body (a JSON object)."""
    if not isinstance(body, dict):
        raise InvalidArgument("the trace settings body must be a JSON object")
    return body


def check_flags(flags: list[str]) -> None:
    """Raise ValueError for ``--trace-config`` flags the tracer would refuse."""
    try:
        updates, options = ts.parse_flags(flags)
        startup_file = str(updates.get("trace_file") or "")
        folder = options.get("dir") or (str(Path(startup_file).parent) if startup_file else "")
        ts.parse_updates(updates, Path(folder).resolve() if folder else None)
    except InvalidArgument as exc:
        raise ValueError(f"--trace-config: {exc.message}") from None
