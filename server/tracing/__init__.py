"""Request tracing (the Monitor stage): W3C trace context in, OpenTelemetry spans out.

The request path carries a :class:`TraceContext` only for sampled requests; every span is built from
timestamps the path already keeps, once the request has finished (:mod:`.spans`).
"""

from nereid.server.tracing.context import TraceContext, parse_traceparent
from nereid.server.tracing.manager import TraceManager
from nereid.server.tracing.settings import TraceSettings

__all__ = ["TraceContext", "TraceManager", "TraceSettings", "parse_traceparent"]
