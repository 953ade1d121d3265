"""HTTP connection limits uvicorn's httptools protocol lacks.

uvicorn arms its keep-alive timer only after a response, and httptools buffers headers of
any size and number. So a connection that never sends a byte, or stops halfway through its
headers, would be held forever, and a 1 MB header or 10,000 headers would be accepted. This
protocol adds, per connection: a deadline for each request's headers (from the connection's
start, or from the request's first byte on a kept-alive connection), and limits on the
number and total size of a request's header fields. Over a limit the client gets 431 (or
408 for the deadline) and the connection closes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nereid.server.http.codec import dumps

#: Most header fields in one request (Apache's default).
MAX_HEADERS = 100
#: Most bytes of request line and header fields in one request.
MAX_HEADER_BYTES = 64 * 1024
#: Seconds a new connection, or a request that has begun, gets to complete its headers.
HEADER_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_headers: int = MAX_HEADERS
    max_header_bytes: int = MAX_HEADER_BYTES
    header_timeout: float = HEADER_TIMEOUT


class _HeaderLimit(Exception):
    """Raised from a parser callback; uvicorn turns it into ``send_400_response``."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus :class:`ConnectionLimits` (see the module docstring)."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_fields = 0
        self._header_bytes = 0
        # Bytes of chunks received while the current request's headers were incomplete.
        self._pending = 0
        self._began_in_chunk = False
        self._refusal: tuple[int, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[LimitedHttpProtocol]:
        """A protocol class for uvicorn's ``http=`` option that applies ``limits``."""
        return type(cls.__name__, (cls,), {"limits": limits})

    # ---- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._began_in_chunk = False
        super().data_received(data)
        if not self._awaiting_headers or self.transport.is_closing():
            return
        # A header still incomplete is buffered by httptools, unseen by the callbacks below.
        self._pending = (0 if self._began_in_chunk else self._pending) + len(data)
        if not self._began_in_chunk and self._pending > self.limits.max_header_bytes:
            self._refuse(431, f"request headers exceed {self.limits.max_header_bytes} bytes")

    # ---- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers, self._began_in_chunk = True, True
        self._header_fields = self._header_bytes = self._pending = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._disarm()
        super().on_headers_complete()

    def _count(self, size: int, fields: int) -> None:
        self._header_bytes += size
        self._header_fields += fields
        if self._header_fields > self.limits.max_headers:
            self._refusal = (431, f"a request may have at most {self.limits.max_headers} header fields")
        elif self._header_bytes > self.limits.max_header_bytes:
            self._refusal = (431, f"request headers exceed {self.limits.max_header_bytes} bytes")
        else:
            return
        raise _HeaderLimit(self._refusal[1])

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(*self._refusal)

    # ---- header deadline -----------------------------------------------------------------------

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse(408, f"request headers not received within {self.limits.header_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error and close, unless a response is being written."""
        self._disarm()
        if self.cycle is None or self.cycle.response_complete:
            body = dumps({"error": message})
            reason = b"Request Timeout" if status == 408 else b"Request Header Fields Too Large"
            head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
                status,
                reason,
                len(body),
            )
            self.transport.write(head + b"connection: close\r\n\r\n" + body)
        self.transport.close()
