"""HTTP connection limits uvicorn's httptools protocol lacks.

uvicorn arms its keep-alive timer only after a response, and httptools buffers headers of
any size and number. So a connection that never sends a byte, or stops halfway through its
headers, would be held forever, and a 1 MB header or 10,000 headers would be accepted. This
protocol adds, per connection: a deadline for each request's headers (from the connection's
start, or from the request's first byte on a kept-alive connection), and limits on the
number and total size of a request's header fields. Over a limit the client gets 431 (or
408 for the deadline) and the connection closes.

Two more things live here because the connection is where they cost nothing per request: the
drain (once the listener drains, each response asks the client to close the connection) and
disconnect watching (a handler registers a callback that ``connection_lost`` calls, instead of
a task per request waiting on ``receive``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

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


#: An app's shortcut for one request: given the request's scope, the ASGI callable that answers it
#: directly (no middleware, no router), or None for the app's ordinary path.
Direct = Callable[[Any], Callable[..., Awaitable[None]] | None]


class ListenerState:
    """What every connection of one listener shares: whether the listener drains, and the app's
    shortcut for its hottest route (see :data:`Direct`)."""

    __slots__ = ("direct", "draining")

    def __init__(self, direct: Direct | None = None) -> None:
        self.draining = False
        self.direct = direct


#: The scope key under which a handler finds the connection's :class:`DisconnectWatch`.
WATCH_KEY = "nereid.disconnect_watch"


class DisconnectWatch:
    """Callbacks a connection calls once, when the client goes away."""

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self._callbacks: set[Callable[[], None]] = set()
        self.lost = False

    def add(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the connection is lost (soon, if it already was)."""
        if self.lost:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._callbacks.add(callback)

    def discard(self, callback: Callable[[], None]) -> None:
        self._callbacks.discard(callback)

    def fire(self) -> None:
        self.lost = True
        callbacks, self._callbacks = self._callbacks, set()
        for callback in callbacks:
            callback()


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, but a response of known length leaves in one ``writelines``.

    uvicorn writes the status line and headers, then the body, as two writes: two syscalls
    and two TCP segments for every small response. Here the head waits for the body when
    ``content-length`` is set (a streamed response still gets its head at once). The common
    response (a status with a body, lower-case header names, ``content-length``, no
    ``connection`` or ``transfer-encoding``) gets its head formatted here, checked with the
    same patterns as uvicorn's but once over all names and once over all values, and is
    completed here: no pass through uvicorn's ``send`` (a third of the loop thread's time in
    the response, see bench/RESULTS.md "Issue 18, part 2").
    """

    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if self.disconnected:
                return  # as uvicorn: nothing more is written for a client that left
            body = message.get("body", b"")
            if (
                message["type"] != "http.response.body"
                or message.get("more_body", False)
                or self.scope["method"] == "HEAD"
                or len(body) != self.expected_content_length
            ):
                self.transport.write(head)  # anything unusual: uvicorn's own path after the head
                await super().send(message)
                return
            self.transport.writelines((head, body))
            # What uvicorn does once a response's last body is written.
            self.expected_content_length = 0
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()
            return
        if not self.response_started and message["type"] == "http.response.start":
            if not (self.flow.write_paused or self.disconnected or self.access_log):
                head = self._simple_head(message)
                if head is not None:
                    self.response_started = True
                    self.waiting_for_100_continue = False
                    self._head = head
                    return
            held = _Held()
            transport, self.transport = self.transport, held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            if self.chunked_encoding is False and self.expected_content_length > 0:
                self._head = b"".join(held.parts)
            elif held.parts:
                transport.writelines(held.parts)
            return
        await super().send(message)

    def _simple_head(self, message: Any) -> bytes | None:
        """The head of a common response (see the class docstring), or None to leave it to uvicorn."""
        status = message["status"]
        if status in (204, 304) or self.scope["method"] == "HEAD":
            return None
        headers = message.get("headers", ())
        content = [STATUS_LINE[status]]
        for name, value in self.default_headers:
            content += (name, b": ", value, b"\r\n")
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"connection" or name == b"transfer-encoding":
                return None
            content += (name, b": ", value, b"\r\n")
        if length is None or not length.isdigit() or int(length) == 0:
            return None
        names = b"".join([name for name, _ in headers])
        if (
            not names.islower()
            or HEADER_RE.search(names)
            or HEADER_VALUE_RE.search(b"".join([v for _, v in headers]))
        ):
            return None  # uvicorn lower-cases names and raises on a bad one
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        self.chunked_encoding = False
        self.expected_content_length = int(length)
        return b"".join(content)


class _Held:
    """Stands in for the transport while uvicorn formats a response head."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


class _HeaderLimit(Exception):
    """Raised from a parser callback; uvicorn turns it into ``send_400_response``."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus :class:`ConnectionLimits` (see the module docstring)."""

    limits = ConnectionLimits()
    state = ListenerState()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_start = 0.0
        self._idle_since: float | None = None  # when the last response ended; None while busy
        self._watch = DisconnectWatch()
        self._header_fields = 0
        self._header_bytes = 0
        # Bytes of chunks received while the current request's headers were incomplete.
        self._pending = 0
        self._began_in_chunk = False
        self._refusal: tuple[int, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @classmethod
    def with_limits(cls, limits: ConnectionLimits, state: ListenerState) -> type[LimitedHttpProtocol]:
        """A protocol class for uvicorn's ``http=`` option that applies ``limits`` and ``state``."""
        return type(cls.__name__, (cls,), {"limits": limits, "state": state})

    # ---- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_start = self.loop.time()
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)
        self._watch.fire()

    # ---- keep-alive: uvicorn arms and cancels a timer per response; here one per connection --

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn calls this on every chunk received; the connection's timer checks idleness itself."""

    def on_response_complete(self) -> None:
        """uvicorn's, but the keep-alive timer stays armed across responses."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_expired
            )

    def _keep_alive_expired(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # a request is under way; its response re-arms the timer
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_expired)
        else:
            self.timeout_keep_alive_handler()

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
        self._idle_since = None
        self._awaiting_headers, self._began_in_chunk = True, True
        self._header_fields = self._header_bytes = self._pending = 0
        self._header_start = self.loop.time()
        if self._deadline is None:  # one timer per connection, not one per request
            self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._over_limit()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Inline, not a helper call: this runs for every header of every request.
        self._header_bytes += len(name) + len(value)
        self._header_fields += 1
        if self._header_fields > self.limits.max_headers or self._header_bytes > self.limits.max_header_bytes:
            self._over_limit()
        # uvicorn's on_header, inline (one call per header, not two). llhttp keeps trailing
        # whitespace, which RFC 9110 section 5.5 excludes from the value.
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self.scope[WATCH_KEY] = self._watch  # type: ignore[literal-required]
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            # uvicorn names its cycle class inside on_headers_complete; a fresh one takes ours.
            cycle.__class__ = _OneWriteCycle
            if self.state.draining:
                cycle.keep_alive = False  # uvicorn adds "connection: close" and closes after the response

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """uvicorn's, but a request the app answers directly skips the middleware (uvicorn's proxy
        headers) and the app's router: one coroutine per layer less (bench/RESULTS.md, Issue 18 part 2)."""
        direct = self.state.direct
        if direct is not None and app is self.app:  # not uvicorn's 503 for an exceeded concurrency limit
            app = direct(cycle.scope) or app
        super()._start_asgi_task(cycle, app)

    def _over_limit(self) -> None:
        if self._header_fields > self.limits.max_headers:
            self._refusal = (431, f"a request may have at most {self.limits.max_headers} header fields")
        else:
            self._refusal = (431, f"request headers exceed {self.limits.max_header_bytes} bytes")
        raise _HeaderLimit(self._refusal[1])

    def drain(self) -> None:
        """The listener drains: a response not yet started asks the client to close."""
        cycles = [self.cycle, *(cycle for cycle, _ in self.pipeline)]
        for cycle in cycles:
            if cycle is not None and not cycle.response_started:
                cycle.keep_alive = False

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(*self._refusal)

    # ---- header deadline -----------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._deadline = self.loop.call_later(delay, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        """The connection's timer: refuse a request whose headers are late, else re-arm for the one
        whose headers are still coming (an idle or busy connection re-arms at its next request)."""
        self._deadline = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        left = self._header_start + self.limits.header_timeout - self.loop.time()
        if left > 0:
            self._arm(left)
        else:
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
