"""A minimal HTTP/1.1 keep-alive client on asyncio protocols, for load generation.

Requests are written as fully pre-encoded bytes (request line, headers and body), and
responses are parsed by httptools (llhttp, the parser the server's uvicorn uses too), so a
request costs the client one ``write`` and a few callbacks. One request at a time per
connection (no pipelining); :class:`Http1Pool` keeps idle connections for reuse.
"""

from __future__ import annotations

import asyncio

import httptools


def encode_request(
    method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """The exact bytes of one HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Http1Connection(asyncio.Protocol):
    """One TCP connection; :meth:`request` sends bytes and resolves to ``(status, body)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._chunks: list[bytes] = []
        self.reusable = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(ConnectionError("the server closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.reusable and self._parser.should_keep_alive()
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def request(self, payload: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("the connection is closed")
        self._waiter = self._loop.create_future()
        self._transport.write(payload)
        return self._waiter

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._transport is not None:
            self._transport.close()


class Http1Pool:
    """Up to ``limit`` keep-alive connections to one ``host:port``, opened on demand."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self._idle: list[Http1Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self.opened = 0

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        async with self._slots:
            conn = self._take_idle() or await self._open()
            try:
                result = await conn.request(payload)
            except BaseException:
                conn.close()
                raise
            if conn.reusable:
                self._idle.append(conn)
            else:
                conn.close()
            return result

    def _take_idle(self) -> Http1Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:  # the server may have closed it while it sat idle
                return conn
        return None

    async def _open(self) -> Http1Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Http1Connection(loop), self.host, self.port)
        self.opened += 1
        return conn

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
