"""Checks a request against the model's signature before it is queued.

Runs on the hot path, so it is plain loops over a handful of inputs; messages follow
Triton's wording where clients may match on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nereid.server.errors import InvalidArgument
from nereid.server.model_config import TensorSpec
from nereid.server.types import InferRequest


def validate_request(
    request: InferRequest,
    model_name: str,
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    max_batch_size: int,
) -> None:
    """Raise InvalidArgument unless every input and requested output fits the config."""
    seen: set[str] = set()
    batch: int | None = None
    for tensor in request.inputs:
        if tensor.name in seen:
            raise InvalidArgument(f"input '{tensor.name}' appears more than once in the request")
        seen.add(tensor.name)
        spec = inputs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"unexpected inference input '{tensor.name}' for model '{model_name}'")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model "
                f"'{model_name}' expects '{spec.datatype}'"
            )
        shape = tensor.shape
        dims = shape
        if max_batch_size > 0:
            if not shape:
                raise InvalidArgument(
                    f"input '{tensor.name}' for model '{model_name}' needs a batch dimension"
                )
            rows = shape[0]
            if rows < 1 or rows > max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {max_batch_size} for '{model_name}', "
                    f"got {rows} for input '{tensor.name}'"
                )
            if batch is not None and rows != batch:
                raise InvalidArgument(
                    f"inputs of model '{model_name}' disagree on the batch dimension ({batch} vs {rows})"
                )
            batch = rows
            dims = shape[1:]
        if not _dims_match(dims, spec.dims):
            expected = spec.full_shape(max_batch_size)
            raise InvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{model_name}'. "
                f"Expected {expected}, got {list(shape)}"
            )
    missing = [name for name, spec in inputs.items() if name not in seen and not spec.optional]
    if missing:
        raise InvalidArgument(
            f"expected {len(inputs)} inputs but got {len(request.inputs)} inputs for model "
            f"'{model_name}'. Got input(s) {sorted(seen)}, but missing required input(s) {missing}"
        )
    requested: set[str] = set()
    for output in request.outputs:
        if output.name not in outputs:
            raise InvalidArgument(f"unexpected inference output '{output.name}' for model '{model_name}'")
        if output.name in requested:
            raise InvalidArgument(f"output '{output.name}' is requested more than once")
        requested.add(output.name)


def _dims_match(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(actual) != len(expected):
        return False
    return all(want == -1 or got == want for got, want in zip(actual, expected, strict=True))


def int_parameter(parameters: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    """An integer request parameter within [low, high], or None when absent."""
    if key not in parameters:
        return None
    value = parameters[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"request parameter '{key}' must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"request parameter '{key}' must be in [{low}, {high}], got {value}")
    return value
