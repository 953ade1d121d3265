"""Parameter values: plain scalars on the wire, typed values in process.

Wire decoders put only ``bool | int | float | str`` values in ``InferRequest.parameters`` (the generate
extension also allows a flat list). In-process producers may put structured values there and in
``InferResponse.parameters`` (the LLM backend's ``list[int]`` token ids and logprob dataclasses, see
:mod:`nereid.server.textgen`): consumers in the same process read them as they are, and every encoder that
leaves the process (HTTP and gRPC codecs, the Python backend's ``pb_utils``) calls :func:`wire_parameters`,
which turns each structured value into its JSON text, ``json.dumps`` style: the bytes wire clients always got.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

_PLAIN = (bool, int, float, str, type(None), np.generic)


def wire_value(value: Any) -> Any:
    """``value`` itself when it is a scalar, else its JSON text (dataclasses as objects, fields in order)."""
    if isinstance(value, _PLAIN):
        return value
    return json.dumps(value, default=_plain)


def wire_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` with every structured value as its JSON text."""
    return {key: wire_value(value) for key, value in parameters.items()}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Optional fields left unset (None) stay off the wire, so adding one keeps the old JSON text.
        fields = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return {name: field for name, field in fields if field is not None}
    raise TypeError(f"parameter value of type {type(value).__name__} has no wire form")
