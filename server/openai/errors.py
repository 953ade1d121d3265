"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

HTTP status comes from the one neutral table (:data:`nereid.server.http.errors.HTTP_STATUS`);
this module only adds OpenAI's ``type`` names on top of it.
"""

from __future__ import annotations

from typing import Any

from nereid.server.errors import ErrorCode, ServingError
from nereid.server.http import codec
from nereid.server.http.asgi import HttpError
from nereid.server.http.errors import HTTP_STATUS

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
}


class OpenAIError(Exception):
    """A failure reported to an OpenAI client; ``param`` names the offending request field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def payload(self) -> dict[str, Any]:
        kind = _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return codec.dumps(self.payload())


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param)


def model_not_found(name: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")


def as_openai_error(exc: BaseException) -> OpenAIError:
    """Any failure of the request path as an OpenAIError (unknown exceptions become 500s)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, HttpError):  # a route's own status (405 wrong method)
        return OpenAIError(exc.status, exc.message)
    if isinstance(exc, ServingError):
        code = None if exc.code is ErrorCode.INTERNAL else exc.code.value.lower()
        return OpenAIError(HTTP_STATUS[exc.code], exc.message, code=code)
    return OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}")
