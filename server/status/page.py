"""Serves the status page (``/``, ``/status``), its script and style, and ``/status/data``."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from nereid.server.http import codec
from nereid.server.status.snapshot import snapshot

if TYPE_CHECKING:
    from nereid.server.core import InferenceCore
    from nereid.server.http.app import Request, Send

_FILES = {
    "": ("index.html", b"text/html; charset=utf-8"),
    "status.js": ("status.js", b"text/javascript; charset=utf-8"),
    "status.css": ("status.css", b"text/css; charset=utf-8"),
}
# The page builds its DOM with textContent only; the policy is a second fence against injection.
_CSP = b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'"


class StatusPage:
    """A mount of :class:`~nereid.server.http.app.HttpFrontend` for the first path part "" or "status"."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        folder = resources.files("nereid.server.status") / "static"
        self._files = {key: ((folder / name).read_bytes(), ctype) for key, (name, ctype) in _FILES.items()}

    async def __call__(self, request: Request, send: Send, parts: list[str]) -> None:
        from nereid.server.http.app import HttpError, respond

        if request.method != "GET":
            raise HttpError(405, f"Method {request.method} is not allowed here; use GET")
        rest = parts[1:]  # "/" and "/status" both give []
        key = rest[0] if rest else ""
        if len(rest) <= 1 and key == "data":
            body: Any = codec.dumps(snapshot(self.core))
            await respond(
                send, 200, body, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
            )
            return
        if len(rest) > 1 or key not in self._files:
            raise HttpError(404, "Not Found")
        content, ctype = self._files[key]
        headers = [
            (b"content-type", ctype),
            (b"content-security-policy", _CSP),
            (b"x-content-type-options", b"nosniff"),
        ]
        await respond(send, 200, content, headers)
