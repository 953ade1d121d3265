"""The KServe v2 HTTP front-end: a raw ASGI app (no framework on the hot path).

Handlers decode with :mod:`nereid.server.http.codec`, call the core, and encode. Any ASGI
server runs it (uvicorn with httptools by default; granian works as a drop-in).
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from nereid.server.core import InferenceCore
from nereid.server.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    as_serving_error,
)
from nereid.server.http import codec
from nereid.server.http.disconnect import cancel_on_disconnect
from nereid.server.http.errors import HTTP_STATUS
from nereid.server.http.generate import generate
from nereid.server.http.observe import adopt_request_id, begin_trace, echo_headers, trace_setting
from nereid.server.logs import access_logged
from nereid.server.model_config import config_from_dict, config_to_dict
from nereid.server.settings import DEFAULT_MAX_INPUT_SIZE

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """The parts of an HTTP request a handler needs; the body is read on demand, bounded."""

    __slots__ = ("_body", "_receive", "headers", "max_size", "method", "parts", "query")

    def __init__(self, scope: Scope, receive: Receive, max_size: int) -> None:
        self.method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.split(b"?", 1)[0].decode("latin-1")
        self.parts = [unquote(p) for p in path.strip("/").split("/")]
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.query: bytes = scope.get("query_string", b"")
        self.max_size = max_size
        self._receive = receive
        self._body: bytes | None = None

    async def body(self) -> bytes:
        if self._body is not None:
            return self._body
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_size:
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


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    decoder = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"cannot decompress the {encoding} body: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise ResourceExhausted(f"decompressed request body exceeds the limit of {limit} bytes")
    return out


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    # An explicit Content-Length spares the server chunked framing.
    head = [*(headers or JSON), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: ServingError | HttpError) -> None:
    status = error.status if isinstance(error, HttpError) else HTTP_STATUS[error.code]
    await respond(send, status, codec.dumps({"error": error.message}))


Handler = Callable[[Request, Send, list[str]], Awaitable[None]]


class HttpFrontend:
    """ASGI application over one :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore, max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> None:
        self.core = core
        self.max_input_size = max_input_size
        # Extra route prefixes (e.g. the OpenAI API) register here: first path part -> handler.
        self.mounts: dict[str, Handler] = {}
        # Log each request on ``nereid.access`` (off by default: it costs a wrapper per request).
        self.access_log = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive, self.max_input_size)
        if self.access_log:
            send = access_logged(request.method, scope["path"], send)
        try:
            await self.route(request, send)
        except (ServingError, HttpError) as exc:
            await respond_error(send, exc)
        except Exception as exc:  # never let one request take the server down
            await respond_error(send, as_serving_error(exc))

    async def route(self, request: Request, send: Send) -> None:
        parts, method = request.parts, request.method
        if parts[0] != "v2":
            mount = self.mounts.get(parts[0])
            if mount is None:
                raise HttpError(404, "Not Found")
            await mount(request, send, parts)
            return
        match parts[1:]:
            case []:
                _allow(method, "GET")
                await respond(send, 200, codec.dumps(self.core.server_metadata()))
            case ["health", "live"]:
                _allow(method, "GET")
                await _health(send, self.core.live(), "Server is not live")
            case ["health", "ready"]:
                _allow(method, "GET")
                await _health(send, self.core.ready(), "Server is not ready")
            case ["models", "stats"]:
                _allow(method, "GET")
                await respond(send, 200, codec.statistics_json(self.core.statistics()))
            case ["models", name, "versions", version, *rest]:
                await self.model_route(request, send, name, version, rest)
            case ["models", name, *rest]:
                await self.model_route(request, send, name, "", rest)
            case ["trace", "setting"]:
                _allow_any(method, ("GET", "POST"))
                await respond(send, 200, codec.dumps(await trace_setting(self.core, request, "")))
            case ["repository", "index"] | ["repository", _, "index"]:
                _allow(method, "POST")
                body = await request.json()
                ready = bool(body.get("ready", False)) if isinstance(body, dict) else False
                await respond(send, 200, codec.dumps(self.core.repository_index(ready)))
            case ["repository", "models", name, ("load" | "unload") as action]:
                _allow(method, "POST")
                await self.repository_action(request, send, name, action)
            case _:
                raise HttpError(404, "Not Found")

    async def model_route(
        self, request: Request, send: Send, name: str, version: str, rest: list[str]
    ) -> None:
        method = request.method
        match rest:
            case ["infer"]:
                _allow(method, "POST")
                await self.infer(request, send, name, version)
            case [("generate" | "generate_stream") as kind]:
                _allow(method, "POST")
                await generate(self.core, request, send, name, version, stream=kind == "generate_stream")
            case []:
                _allow(method, "GET")
                await respond(send, 200, codec.model_metadata_json(self.core.model_metadata(name, version)))
            case ["ready"]:
                _allow(method, "GET")
                await _health(send, self.core.model_ready(name, version), "Model version not ready")
            case ["config"]:
                _allow(method, "GET")
                await respond(send, 200, codec.dumps(config_to_dict(self.core.model_config(name, version))))
            case ["stats"]:
                _allow(method, "GET")
                await respond(send, 200, codec.statistics_json(self.core.statistics(name, version)))
            case ["trace", "setting"]:
                _allow_any(method, ("GET", "POST"))
                await respond(send, 200, codec.dumps(await trace_setting(self.core, request, name)))
            case [other, *_] if other in self.mounts:
                await self.mounts[other](request, send, [name, version, *rest])
            case _:
                raise HttpError(404, "Not Found")

    async def infer(self, request: Request, send: Send, name: str, version: str) -> None:
        trace = begin_trace(self.core, request, name)
        body = await request.body()
        header = request.headers.get("inference-header-content-length")
        header_length = _header_int(header) if header is not None else None
        infer_request = codec.decode_request(body, header_length, name, version)
        infer_request.trace = trace
        if "x-request-id" in request.headers:
            adopt_request_id(request, infer_request)
        response = await cancel_on_disconnect(request, self.core.infer(infer_request))
        payload, json_length = codec.encode_response(infer_request, response)
        extra = echo_headers(request, infer_request) if infer_request.id or trace is not None else []
        if json_length is None:
            await respond(send, 200, payload, [*JSON, *extra] if extra else None)
            return
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode()),
            *extra,
        ]
        await respond(send, 200, payload, headers)

    async def repository_action(self, request: Request, send: Send, name: str, action: str) -> None:
        body = await request.json()
        params = body.get("parameters", {}) if isinstance(body, dict) else {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        if action == "load":
            config = params.get("config")
            if any(key.startswith("file:") for key in params):
                raise InvalidArgument("loading model files through the API is not supported")
            override = None
            if config is not None:
                if not isinstance(config, str):
                    raise InvalidArgument("'config' must be a JSON string")
                override = config_from_dict(codec.loads(config.encode()), "load 'config'")
            await self.core.load_model(name, override)
        else:
            await self.core.unload_model(name)
        await respond(send, 200, b"")


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"Method {method} is not allowed here; use {allowed}")


def _allow_any(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise HttpError(405, f"Method {method} is not allowed here; use {' or '.join(allowed)}")


def _header_int(value: str) -> int:
    if not value.strip().isdigit():
        raise InvalidArgument(
            f"Inference-Header-Content-Length must be a non-negative integer, got '{value}'"
        )
    return int(value)


async def _health(send: Send, ok: bool, message: str) -> None:
    if ok:
        await respond(send, 200, b"", [])
    else:
        await respond(send, 503, codec.dumps({"error": message}))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = ["HttpError", "HttpFrontend", "NotFound", "Request", "respond", "respond_error"]
