"""The connection's own path for ``POST /v2/models/{m}[/versions/{v}]/infer``: no ASGI cycle.

Through ASGI, every infer call builds a scope, a request-response cycle with its event, a
``receive`` message for the body and two ``send`` messages whose head is checked and formatted
again. Here the connection reads the headers and body from httptools' callbacks itself, hands
them to the app's own decode → ``core.infer`` → encode (:meth:`HttpFrontend.fast_infer`, the
same functions the ASGI route calls) in one task, and writes the response with one
``transport.write``.

The app decides which requests qualify (:meth:`HttpFrontend.fast_target`); everything else —
other paths and methods, a guard or access log, ``Expect: 100-continue``, chunked, compressed
or oversized bodies, upgrades, HTTP/1.0 — goes through uvicorn and the ASGI app as before.
Behaviour is uvicorn's: requests pipelined on a connection are answered in order (an exchange
waits in uvicorn's pipeline like a cycle), keep-alive and the drain's ``connection: close``
follow the same flags, the task is in the server's task set (so shutdown waits for it), and a
client that leaves cancels the work through the connection's :class:`DisconnectWatch`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from nereid.server.http.connection import DisconnectWatch, LimitedHttpProtocol

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
Target = tuple[str, str]


class FastInfer(Protocol):
    """What the app offers the connection (implemented by :class:`HttpFrontend`)."""

    def fast_target(self, path: bytes, headers: dict[str, str]) -> Target | None: ...

    def fast_infer(
        self, target: Target, headers: dict[str, str], body: bytes, watch: DisconnectWatch
    ) -> Awaitable[tuple[int, bytes, Headers]]: ...


class _NoEvent:
    """uvicorn's protocol sets ``cycle.message_event`` on a disconnect; an exchange has none to wake."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class Exchange:
    """One request the connection answers itself; stands where uvicorn keeps its cycle (the
    attributes uvicorn's protocol reads: ``response_started``, ``response_complete``,
    ``disconnected``, ``keep_alive``, ``message_event``)."""

    __slots__ = (
        "body",
        "complete",
        "disconnected",
        "headers",
        "keep_alive",
        "response_complete",
        "response_started",
        "target",
        "turn",
    )

    message_event = _NO_EVENT

    def __init__(self, target: Target, headers: dict[str, str], keep_alive: bool) -> None:
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.complete = False  # the whole body has arrived
        self.turn = False  # every earlier request on the connection has been answered
        self.disconnected = False
        self.response_started = False
        self.response_complete = False


class FastHttpProtocol(LimitedHttpProtocol):
    """:class:`LimitedHttpProtocol` that answers the app's infer calls without ASGI (module docstring)."""

    fast: FastInfer | None = None

    def on_headers_complete(self) -> None:
        exchange = self._exchange()
        if exchange is None:
            super().on_headers_complete()
            return
        self._awaiting_headers = False
        previous, self.cycle = self.cycle, exchange  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            self._take_turn(exchange)
        else:  # pipelined: uvicorn starts it when the response before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((exchange, self.app))  # type: ignore[arg-type]

    def _exchange(self) -> Exchange | None:
        fast = self.fast
        if (
            fast is None
            or self.expect_100_continue
            or self.limit_concurrency is not None
            or self.parser.get_method() != b"POST"
            or self.parser.get_http_version() != "1.1"
            or self.parser.should_upgrade()
        ):
            return None
        path = self.url.split(b"?", 1)[0]
        if b"#" in path:
            return None
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in self.headers}
        target = fast.fast_target(path, headers)
        if target is None:
            return None
        keep_alive = self.parser.should_keep_alive() and not self.state.draining
        return Exchange(target, headers, keep_alive)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is Exchange:
            cycle.body.append(body)  # at most Content-Length bytes, within the app's limit
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is Exchange:
            cycle.complete = True
            if cycle.turn:
                self._start(cycle)
        else:
            super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is Exchange:
            self._take_turn(cycle)  # its turn came in uvicorn's pipeline
        else:
            super()._start_asgi_task(cycle, app)

    def _take_turn(self, exchange: Exchange) -> None:
        exchange.turn = True
        if exchange.complete:
            self._start(exchange)
        # else on_message_complete starts it

    def _start(self, exchange: Exchange) -> None:
        task = self.loop.create_task(self._answer(exchange))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, exchange: Exchange) -> None:
        assert self.fast is not None
        body = exchange.body[0] if len(exchange.body) == 1 else b"".join(exchange.body)
        exchange.body = []
        try:
            status, payload, headers = await self.fast.fast_infer(
                exchange.target, exchange.headers, body, self._watch
            )
            if self.flow.write_paused and not exchange.disconnected:
                await self.flow.drain()  # as uvicorn's send: wait while the client reads slowly
        except BaseException:
            # fast_infer answers every Exception itself; this is a cancellation (a forced shutdown).
            self.transport.close()
            raise
        transport = self.transport
        if exchange.disconnected or transport.is_closing():
            return  # as uvicorn: nothing more is written for a client that left
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        content.append(b"content-length: %d\r\n" % len(payload))
        if not exchange.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", payload)
        exchange.response_started = exchange.response_complete = True
        transport.write(b"".join(content))
        if not exchange.keep_alive:
            transport.close()
        self.on_response_complete()
