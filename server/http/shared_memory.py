"""HTTP routes of the shared memory extensions: ``/v2/systemsharedmemory/...`` and ``/v2/cudasharedmemory/...``.

Status answers a JSON list of regions; register takes ``{"key", "offset", "byte_size"}`` (system)
or ``{"raw_handle": {"b64"}, "device_id", "byte_size"}`` (CUDA); unregister without a region
unregisters every one. Success is 200 with an empty body, as in Triton.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from nereid.server.errors import InvalidArgument
from nereid.server.http import codec
from nereid.server.http.asgi import HttpError, Request, Send, allow, respond
from nereid.server.shared_memory import SharedMemoryRegistry


async def shared_memory_route(
    registry: SharedMemoryRegistry, request: Request, send: Send, kind: str, rest: list[str]
) -> None:
    """Serve one ``/v2/<kind>/...`` call; ``kind`` is ``systemsharedmemory`` or ``cudasharedmemory``."""
    cuda = kind == "cudasharedmemory"
    match rest:
        case ["status"] | ["region", _, "status"]:
            allow(request.method, "GET")
            name = rest[1] if len(rest) == 3 else ""
            regions = registry.cuda_status(name) if cuda else registry.status(name)
            await respond(send, 200, codec.dumps(regions))
        case ["region", name, "register"]:
            allow(request.method, "POST")
            body = await request.json()
            if cuda:
                registry.cuda_precheck(name)  # disabled / no GPU answer before the body is read
                registry.cuda_register(
                    name,
                    _raw_handle(body),
                    _field(body, "device_id", int),
                    _field(body, "byte_size", int),
                )
            else:
                registry.register(
                    name,
                    _field(body, "key", str),
                    _field(body, "offset", int, 0),
                    _field(body, "byte_size", int),
                )
            await respond(send, 200, b"")
        case ["unregister"] | ["region", _, "unregister"]:
            allow(request.method, "POST")
            name = rest[1] if len(rest) == 3 else ""
            registry.cuda_unregister(name) if cuda else registry.unregister(name)
            await respond(send, 200, b"")
        case _:
            raise HttpError(404, "Not Found")


_KINDS = {str: "a string", dict: "an object", int: "an integer"}


def _field(body: Any, key: str, kind: type, default: Any = None) -> Any:
    """A register request's field (absent: ``default``, or an error when it has none)."""
    if not isinstance(body, dict):
        raise InvalidArgument("the shared memory register request must be a JSON object")
    if key not in body:
        if default is None:
            raise InvalidArgument(f"Shared memory register request has no '{key}' field")
        return default
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidArgument(f"Unable to parse '{key}': expected {_KINDS.get(kind, 'an integer')}")
    return value


def _raw_handle(body: Any) -> bytes:
    """The CUDA IPC handle of a register request: ``{"raw_handle": {"b64": "<base64>"}}``."""
    wrapper = _field(body, "raw_handle", dict)
    encoded = wrapper.get("b64")
    if not isinstance(encoded, str):
        raise InvalidArgument('Unable to parse \'raw_handle\': expected {"b64": "<base64 string>"}')
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("Unable to parse 'raw_handle': 'b64' is not valid base64") from None
