"""uvicorn as Nereid runs it: bound sockets, no signal handling of its own, and a drain that a
load balancer can follow.

While draining, every response carries ``Connection: close``: keep-alive clients and balancers
retire their connections one response at a time while the replica still listens, instead of
finding an idle connection closed under them when the listener goes (``Remote end closed
connection without response``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from nereid.server.http.connection import ConnectionLimits, LimitedHttpProtocol, ListenerState
from nereid.server.http.fast import FastHttpProtocol

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: NereidServer owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpListener:
    """One ASGI app served by uvicorn on one socket; ``drain`` then ``stop``."""

    def __init__(
        self,
        app: ASGIApp,
        address: str,
        port: int,
        exit_timeout: float,
        tls: dict[str, Any] | None = None,
        header_timeout: float = 10.0,
    ) -> None:
        self.app = app
        # The drain is a flag the connections read once per request (server/http/connection.py).
        # An app may answer its hottest route directly (HttpFrontend.direct_app: POST .../infer).
        self.state = ListenerState(getattr(app, "direct_app", None))
        self.sock = bind(address, port)
        self.port = int(self.sock.getsockname()[1])
        protocol = FastHttpProtocol.with_limits(ConnectionLimits(header_timeout=header_timeout), self.state)
        # POST .../infer answered by the connection itself, when the app offers it (server/http/fast.py).
        protocol.fast = app if hasattr(app, "fast_infer") else None  # type: ignore[attr-defined]
        config = uvicorn.Config(
            self.app,
            # httptools with header count, size and slow-header limits (server/http/connection.py).
            http=protocol,
            loop="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=30,
            backlog=2048,
            # uvicorn cancels what is still running after this; stop() bounds the rest.
            timeout_graceful_shutdown=int(exit_timeout) if exit_timeout >= 1 else 1,
            # No "server: uvicorn": the response headers do not advertise the stack.
            server_header=False,
            **(tls or {}),
        )
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raise what stopped it
            await asyncio.sleep(0.01)
        return self.port

    def drain(self) -> None:
        """Keep serving, but close each connection after its next response."""
        self.state.draining = True
        for connection in self._server.server_state.connections:
            if isinstance(connection, LimitedHttpProtocol):
                connection.drain()

    async def stop(self, timeout: float) -> bool:
        """Close the listener and idle connections; wait up to ``timeout`` for the rest.

        Returns whether every request finished in time; if not, the rest are cancelled.
        """
        if self._task is None:
            return True
        self._server.should_exit = True
        done, _ = await asyncio.wait([self._task], timeout=timeout)
        if done:
            return True
        self._server.force_exit = True
        self._task.cancel()
        await asyncio.wait([self._task], timeout=1.0)
        return False
