"""The KServe v2 HTTP front-end: a raw ASGI app (no framework on the hot path).

Handlers decode with :mod:`nereid.server.http.codec`, call the core, and encode. Any ASGI
server runs it (uvicorn with httptools by default; granian works as a drop-in).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nereid.server.core import InferenceCore
from nereid.server.errors import InvalidArgument, NotFound, ServingError, as_serving_error
from nereid.server.http import codec
from nereid.server.http.asgi import (
    JSON,
    HttpError,
    Receive,
    Request,
    Scope,
    Send,
    error_reply,
    respond,
    respond_error,
)
from nereid.server.http.asgi import allow as _allow
from nereid.server.http.connection import DisconnectWatch
from nereid.server.http.disconnect import cancel_on_disconnect
from nereid.server.http.generate import generate
from nereid.server.http.guard import HttpGuard
from nereid.server.http.observe import (
    adopt_request_id,
    begin_trace,
    echo_headers,
    log_setting,
    trace_setting,
)
from nereid.server.http.shared_memory import shared_memory_route
from nereid.server.lifecycle import load_parameters, unload_dependents
from nereid.server.logs import access_logged
from nereid.server.model_config import config_to_dict
from nereid.server.settings import DEFAULT_MAX_INPUT_SIZE
from nereid.server.validation import parse_ascii_int

Handler = Callable[[Request, Send, list[str]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class HttpFrontend:
    """ASGI application over one :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore, max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> None:
        self.core = core
        self.max_input_size = max_input_size
        # Extra route prefixes (e.g. the OpenAI API) register here: first path part -> handler.
        self.mounts: dict[str, Handler] = {}
        # Authentication, restricted APIs and rate limits (nereid.server.http.guard), when on.
        self.guard: HttpGuard | None = None
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
            if self.guard is not None and not await self.guard.admit(request, scope, send):
                return
            await self.route(request, send)
        except (ServingError, HttpError) as exc:
            await respond_error(send, exc)
        except Exception as exc:  # never let one request take the server down
            await respond_error(send, as_serving_error(exc))

    def direct_app(self, scope: Scope) -> Callable[[Scope, Receive, Send], Awaitable[None]] | None:
        """``POST /v2/models/{m}[/versions/{v}]/infer`` straight to :meth:`direct_infer`, when nothing
        wraps a request (no guard, no access log); None sends the request the ordinary way.

        The connection (server/http/connection.py) asks this once per request and then skips
        uvicorn's proxy-headers middleware, ``__call__`` and the router. Neither is observable on
        this path: the client address and scheme that middleware rewrites are read only by the guard
        and the access log, which take the ordinary path.
        """
        if scope["method"] != "POST" or self.guard is not None or self.access_log:
            return None
        path: str = scope["path"]
        if not path.endswith("/infer") or not path.startswith("/v2/models/"):
            return None
        return self.direct_infer

    async def direct_infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What ``__call__`` does for a request :meth:`direct_app` picked, without the router's match."""
        request = Request(scope, receive, self.max_input_size)
        parts = request.parts
        try:
            if len(parts) == 4 and parts[1] == "models" and parts[3] == "infer":
                await self.infer(request, send, parts[2], "")
            elif len(parts) == 6 and parts[1] == "models" and parts[3] == "versions" and parts[5] == "infer":
                await self.infer(request, send, parts[2], parts[4])
            else:  # an escaped path that decodes to .../infer: the router decides
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
            case ["logging"]:
                _allow_any(method, ("GET", "POST"))
                await respond(send, 200, codec.dumps(await log_setting(request)))
            case ["repository", "index"] | ["repository", _, "index"]:
                _allow(method, "POST")
                body = await request.json()
                ready = bool(body.get("ready", False)) if isinstance(body, dict) else False
                await respond(send, 200, codec.dumps(self.core.repository_index(ready)))
            case ["repository", "models", name, ("load" | "unload") as action]:
                _allow(method, "POST")
                await self.repository_action(request, send, name, action)
            case [("systemsharedmemory" | "cudasharedmemory") as kind, *rest]:
                await shared_memory_route(self.core.shared_memory, request, send, kind, rest)
            case ["repository", "models", name, "routing"]:
                _allow(method, "GET")
                await respond(send, 200, codec.dumps(self.core.routing_state(name)))
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
                # Triton and the KServe v2 spec answer a model that is not ready with a 4xx (400).
                ready = self.core.model_ready(name, version)
                label = f"model '{name}'" + (f" version {version}" if version else "")
                await _health(send, ready, f"{label} is not ready", 400)
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
        payload, headers = await self.infer_reply(request, name, version)
        await respond(send, 200, payload, headers)

    async def infer_reply(self, request: Request, name: str, version: str) -> tuple[bytes, Headers]:
        """Decode, infer, encode: the 200 response's body and headers (without Content-Length)."""
        trace = begin_trace(self.core, request, name)
        body = await request.body()
        header = request.headers.get("inference-header-content-length")
        header_length = _header_int(header) if header is not None else None
        shm = self.core.shared_memory
        infer_request = codec.decode_request(body, header_length, name, version, shm)
        sticky = self.core.router.sticky_header(name)
        if sticky and sticky in request.headers:
            infer_request.parameters.setdefault(sticky, request.headers[sticky])
        infer_request.trace = trace
        if "x-request-id" in request.headers:
            adopt_request_id(request, infer_request)
        response = await cancel_on_disconnect(request, self.core.infer(infer_request))
        payload, json_length = codec.encode_response(infer_request, response, shm)
        extra = echo_headers(request, infer_request) if infer_request.id or trace is not None else []
        if json_length is None:
            return payload, [*JSON, *extra] if extra else JSON
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode()),
            *extra,
        ]
        return payload, headers

    # ---- the connection's own path for POST .../infer (server/http/fast.py) ----------------------

    def fast_target(self, path: bytes, headers: dict[str, str]) -> tuple[str, str] | None:
        """``(model, version)`` when the connection may answer this ``POST`` itself; None sends it
        through the ASGI app (:meth:`direct_app` or ``__call__``), which answers everything else.

        Only a plain infer call qualifies: nothing wraps requests (no guard, no access log), the
        path has no escapes, and the body is a complete identity-encoded ``Content-Length`` body
        within the limit (a chunked, compressed or oversized body takes the app's path, which reads,
        inflates or refuses it).
        """
        if self.guard is not None or self.access_log:
            return None
        if not path.startswith(b"/v2/models/") or not path.endswith(b"/infer") or b"%" in path:
            return None
        length = headers.get("content-length")
        if (
            length is None
            or not (length.isascii() and length.isdigit())
            or int(length) > self.max_input_size
            or "transfer-encoding" in headers
            or "content-encoding" in headers
        ):
            return None
        parts = path.decode("latin-1").split("/")  # ["", "v2", "models", name, ..., "infer"]
        if len(parts) == 5:
            return parts[3], ""
        if len(parts) == 7 and parts[4] == "versions":
            return parts[3], parts[5]
        return None

    async def fast_infer(
        self, target: tuple[str, str], headers: dict[str, str], body: bytes, watch: DisconnectWatch
    ) -> tuple[int, bytes, Headers]:
        """Answer a request :meth:`fast_target` accepted: status, body and headers, errors included."""
        name, version = target
        parts = ["v2", "models", name, *(("versions", version) if version else ()), "infer"]
        try:
            request = Request.received(parts, headers, body, watch, self.max_input_size)
            payload, reply_headers = await self.infer_reply(request, name, version)
            return 200, payload, reply_headers
        except (ServingError, HttpError) as exc:
            return (*error_reply(exc), JSON)
        except Exception as exc:  # never let one request take the server down
            return (*error_reply(as_serving_error(exc)), JSON)

    async def repository_action(self, request: Request, send: Send, name: str, action: str) -> None:
        body = await request.json()
        params = body.get("parameters", {}) if isinstance(body, dict) else {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        if action == "load":
            load = load_parameters(params)
            if load.routing_action:
                self.core.routing_action(name, load.routing_action)
            else:
                await self.core.load_model(name, load.config, load.files)
        else:
            await self.core.unload_model(name, unload_dependents(params))
        await respond(send, 200, b"")


def _allow_any(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise HttpError(405, f"Method {method} is not allowed here; use {' or '.join(allowed)}")


def _header_int(value: str) -> int:
    return parse_ascii_int(value, "Inference-Header-Content-Length")


async def _health(send: Send, ok: bool, message: str, status: int = 503) -> None:
    if ok:
        await respond(send, 200, b"", [])
    else:
        await respond(send, status, codec.dumps({"error": message}))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = ["HttpError", "HttpFrontend", "NotFound", "Request", "respond", "respond_error"]
