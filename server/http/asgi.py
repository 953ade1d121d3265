"""The ASGI plumbing every HTTP route shares: the request object, responses, 405s, server-sent events.

The v2 front-end (:mod:`nereid.server.http.app`), Triton's generate extension
(:mod:`nereid.server.http.generate`) and the OpenAI mount (:mod:`nereid.server.openai.app`) import these
from here, so none of them imports another for its helpers.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from nereid.server.errors import InvalidArgument, ResourceExhausted, ServingError
from nereid.server.http import codec
from nereid.server.http.connection import WATCH_KEY, DisconnectWatch
from nereid.server.http.errors import HTTP_STATUS

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class HttpError(Exception):
    """A failure that is an HTTP status of its own (404 no route, 405 wrong method), not a ServingError."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """The parts of an HTTP request a handler needs; the body is read on demand, bounded."""

    __slots__ = ("_body", "_receive", "headers", "max_size", "method", "parts", "query", "watch")

    def __init__(self, scope: Scope, receive: Receive, max_size: int) -> None:
        self.method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.split(b"?", 1)[0].decode("latin-1")
        parts = path.strip("/").split("/")
        self.parts = [unquote(p) for p in parts] if "%" in path else parts
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.query: bytes = scope.get("query_string", b"")
        # The connection's disconnect callbacks, when the server offers them (Nereid's does).
        self.watch: DisconnectWatch | None = scope.get(WATCH_KEY)
        self.max_size = max_size
        self._receive = receive
        self._body: bytes | None = None

    @classmethod
    def received(
        cls, parts: list[str], headers: dict[str, str], body: bytes, watch: DisconnectWatch, max_size: int
    ) -> Request:
        """A ``POST`` whose identity-encoded body the connection has already read (server/http/fast.py)."""
        request = cls.__new__(cls)
        request.method, request.parts, request.headers, request.query = "POST", parts, headers, b""
        request.watch, request.max_size = watch, max_size
        request._receive, request._body = _no_receive, body
        return request

    async def body(self) -> bytes:
        if self._body is not None:
            return self._body
        length = self.headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > self.max_size:
            raise ResourceExhausted(f"request body of {length} bytes exceeds the limit of {self.max_size}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ServingError("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_size:
                raise ResourceExhausted(f"request body exceeds the limit of {self.max_size} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = self.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            body = _decompress(body, encoding, self.max_size)
        elif encoding != "identity":
            raise InvalidArgument(f"unsupported Content-Encoding '{encoding}'")
        self._body = body
        return body

    async def disconnected(self) -> None:
        """Return once the client has gone away (call only after the body was read)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def json(self) -> Any:
        body = await self.body()
        return codec.loads(body) if body.strip() else {}


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}  # a received request's body is whole; nothing more comes


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    decoder = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"cannot decompress the {encoding} body: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise ResourceExhausted(f"decompressed request body exceeds the limit of {limit} bytes")
    return out


def allow(method: str, allowed: str) -> None:
    """Raise a 405 unless the request's ``method`` is the route's ``allowed`` one."""
    if method != allowed:
        raise HttpError(405, f"Method {method} is not allowed here; use {allowed}")


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    # An explicit Content-Length spares the server chunked framing.
    head = [*(headers or JSON), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def error_reply(error: ServingError | HttpError) -> tuple[int, bytes]:
    """The status and ``{"error": message}`` body that answer ``error``."""
    status = error.status if isinstance(error, HttpError) else HTTP_STATUS[error.code]
    return status, codec.dumps({"error": error.message})


async def respond_error(send: Send, error: ServingError | HttpError) -> None:
    await respond(send, *error_reply(error))


async def start_events(send: Send) -> None:
    """Open a server-sent-events response (status 200)."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})


async def send_event(send: Send, payload: Any) -> None:
    """One server-sent event, ``data: {json}\\n\\n``, on a response opened with :func:`start_events`."""
    body = b"data: " + codec.dumps(payload) + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})
