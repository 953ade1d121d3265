"""Each transport maps every neutral ErrorCode exactly once (one table per transport)."""

from __future__ import annotations

import grpc

from nereid.server.errors import ErrorCode
from nereid.server.grpc.errors import GRPC_STATUS
from nereid.server.http.errors import HTTP_STATUS


def test_http_table_covers_every_code() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert all(isinstance(status, int) and 400 <= status < 600 for status in HTTP_STATUS.values())
    assert HTTP_STATUS[ErrorCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[ErrorCode.UNAUTHENTICATED] == 401
    assert HTTP_STATUS[ErrorCode.PERMISSION_DENIED] == 403
    assert HTTP_STATUS[ErrorCode.RATE_LIMITED] == 429


def test_grpc_table_covers_every_code_with_triton_mapping() -> None:
    assert set(GRPC_STATUS) == set(ErrorCode)
    assert grpc.StatusCode.OK not in GRPC_STATUS.values()
    assert GRPC_STATUS[ErrorCode.INVALID_ARG] == grpc.StatusCode.INVALID_ARGUMENT
    assert GRPC_STATUS[ErrorCode.UNSUPPORTED] == grpc.StatusCode.UNIMPLEMENTED
    # Rate limits and oversized messages are both RESOURCE_EXHAUSTED over gRPC (429 vs 413 over HTTP).
    assert GRPC_STATUS[ErrorCode.RATE_LIMITED] == grpc.StatusCode.RESOURCE_EXHAUSTED
    same_name = set(ErrorCode) - {ErrorCode.INVALID_ARG, ErrorCode.UNSUPPORTED, ErrorCode.RATE_LIMITED}
    assert all(GRPC_STATUS[code].name == code.name for code in same_name)
