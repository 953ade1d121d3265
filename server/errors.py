"""The one neutral error model of Nereid.

Every failure that crosses the core's boundary is a :class:`ServingError` carrying an
:class:`ErrorCode`. Front-ends never invent codes; each transport maps them once
(`nereid.server.http.errors.HTTP_STATUS`, `nereid.server.grpc.errors.GRPC_STATUS`).
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    """Triton's neutral status codes (TRITONSERVER_Error_Code)."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    #: No valid credentials (HTTP 401 with WWW-Authenticate).
    UNAUTHENTICATED = "UNAUTHENTICATED"
    #: Valid credentials without the scope for this API group or model (HTTP 403).
    PERMISSION_DENIED = "PERMISSION_DENIED"
    #: A per-client rate limit is exhausted (HTTP 429 with Retry-After).
    RATE_LIMITED = "RATE_LIMITED"


class ServingError(Exception):
    """An error with a neutral code; its message is what the client sees."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value}: {self.message!r})"


class InvalidArgument(ServingError):
    code = ErrorCode.INVALID_ARG


class NotFound(ServingError):
    code = ErrorCode.NOT_FOUND


class Unavailable(ServingError):
    code = ErrorCode.UNAVAILABLE


class Unsupported(ServingError):
    code = ErrorCode.UNSUPPORTED


class AlreadyExists(ServingError):
    code = ErrorCode.ALREADY_EXISTS


class Cancelled(ServingError):
    code = ErrorCode.CANCELLED


class ResourceExhausted(ServingError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServingError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    code = ErrorCode.PERMISSION_DENIED


class RateLimited(ServingError):
    """A rate limit said no; ``retry_after_s`` is when the client may try again."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InternalError(ServingError):
    code = ErrorCode.INTERNAL


def as_serving_error(exc: BaseException) -> ServingError:
    """Wrap any exception raised below the core so that front-ends only see ServingError."""
    if isinstance(exc, ServingError):
        return exc
    return InternalError(f"{type(exc).__name__}: {exc}")
