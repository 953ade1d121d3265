"""The ``sequence`` extension's request parameters -> :class:`~nereid.server.types.SequenceFlags`.

``sequence_id`` is an unsigned integer or a string (0 and "" mean "no sequence");
``sequence_start`` and ``sequence_end`` are booleans. tritonclient sends all three over HTTP
(JSON parameters) and gRPC (``InferParameter``) alike, so the core parses them once here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nereid.server.errors import InvalidArgument
from nereid.server.types import CorrelationId, SequenceFlags

_KEYS = ("sequence_id", "sequence_start", "sequence_end")
_MAX_ID = 2**64 - 1


def sequence_flags(parameters: Mapping[str, Any]) -> SequenceFlags | None:
    """The request's sequence flags, or None when it sets none of the three parameters."""
    if not any(key in parameters for key in _KEYS):
        return None
    return SequenceFlags(
        _correlation_id(parameters.get("sequence_id", 0)),
        _flag(parameters, "sequence_start"),
        _flag(parameters, "sequence_end"),
    )


def _correlation_id(value: Any) -> CorrelationId:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"request parameter 'sequence_id' must be an unsigned integer or a string, got {value!r}"
        )
    if not 0 <= value <= _MAX_ID:
        raise InvalidArgument(f"request parameter 'sequence_id' must be in [0, 2^64 - 1], got {value}")
    return value


def _flag(parameters: Mapping[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"request parameter '{key}' must be a boolean, got {value!r}")
    return value
