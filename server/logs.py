"""Logging set-up: today's text lines or one JSON object a line, and the optional access log.

A record may carry ``model``, ``version``, ``request_id`` and ``trace_id`` (pass them in ``extra=``);
the JSON format always writes those keys (null when absent), so log pipelines see one schema.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "default", "ISO8601", "json")
CONTEXT_FIELDS = ("model", "version", "request_id", "trace_id")
TEXT_FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"
ACCESS = logging.getLogger("nereid.access")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "model", "version", "request_id", "trace_id"}`` a line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            entry[key] = getattr(record, key, None)
        for key in ("method", "path", "status", "duration_ms", "protocol"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class EscapingFormatter(logging.Formatter):
    """Text lines whose message is escaped as Triton does, so a newline in a name cannot forge a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = json.dumps(record.message, ensure_ascii=False)[1:-1]
        return super().formatMessage(record)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of one of :data:`FORMATS` (``text`` and ``default`` are the same)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "ISO8601":
        formatter = EscapingFormatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        return formatter
    return EscapingFormatter(TEXT_FORMAT)


def configure(log_format: str = "text", verbose: int = 0, stream: Any = None) -> None:
    """Install one handler on the root logger in the chosen format (replacing earlier ones).

    The handler is tagged with its format so the logging extension can change it at run time.
    """
    if log_format not in FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, got '{log_format}'")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    handler.nereid_format = "default" if log_format == "text" else log_format  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


Send = Callable[[dict[str, Any]], Awaitable[None]]


def access_logged(method: str, path: str, send: Send) -> Send:
    """Wrap an ASGI ``send`` so the finished response is logged on ``nereid.access``.

    The request id and trace id are read from the response's own ``x-request-id`` and ``traceparent``.
    """
    start = time.perf_counter()
    state: dict[str, Any] = {}

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            state["status"] = message["status"]
            headers = dict(message.get("headers") or ())
            state["request_id"] = headers.get(b"x-request-id", b"").decode("latin-1") or None
            traceparent = headers.get(b"traceparent", b"").decode("latin-1")
            state["trace_id"] = traceparent.split("-")[1] if traceparent.count("-") == 3 else None
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            log_access("http", method, path, state.get("status", 0), time.perf_counter() - start, state)

    return wrapped


def log_access(
    protocol: str, method: str, path: str, status: int | str, seconds: float, ids: dict[str, Any]
) -> None:
    parts = path.strip("/").split("/")
    model = parts[2] if len(parts) > 2 and parts[:2] == ["v2", "models"] else None
    version = parts[4] if model and len(parts) > 4 and parts[3] == "versions" else None
    ACCESS.info(
        "%s %s %s %.3fms",
        method,
        path,
        status,
        seconds * 1000,
        extra={
            "model": model,
            "version": version,
            "request_id": ids.get("request_id"),
            "trace_id": ids.get("trace_id"),
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "protocol": protocol,
        },
    )
