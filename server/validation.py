"""Checks a request against the model's signature before it is queued.

Runs on the hot path, so it is plain loops over a handful of inputs; messages follow
Triton's wording where clients may match on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nereid.server.classification import class_count
from nereid.server.errors import InvalidArgument
from nereid.server.model_config import TensorSpec
from nereid.server.types import InferRequest

#: Most dimensions a tensor may have (numpy's limit too).
MAX_RANK = 64
#: Largest dimension: the int64 of the gRPC shape field.
MAX_DIM = 2**63 - 1
#: Most inputs, or requested outputs, one request may carry; checked before any tensor is decoded.
MAX_TENSORS = 1024


def check_shape(name: str, shape: Any, max_elements: int) -> tuple[int, ...]:
    """``shape`` as a tuple, refused unless it is at most MAX_RANK non-negative int64 dimensions
    whose product is at most ``max_elements`` (what the request's data can hold)."""
    if not isinstance(shape, list | tuple):
        raise InvalidArgument(f"input '{name}': 'shape' must be a list of integers")
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"input '{name}': shape has {len(shape)} dimensions, more than {MAX_RANK}")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= MAX_DIM:
            raise InvalidArgument(
                f"input '{name}': shape {list(shape)} must hold non-negative integers below 2^63"
            )
    if 0 in shape:
        return tuple(shape)
    count = 1
    for dim in shape:
        count *= dim
        if count > max_elements:
            raise InvalidArgument(
                f"unexpected number of elements for input '{name}': the request's data cannot hold "
                f"the elements of shape {list(shape)} (at most {max_elements})"
            )
    return tuple(shape)


def raw_element_limit(datatype: str, size: int) -> int:
    """The most elements ``size`` bytes of raw tensor data can hold, for :func:`check_shape`.

    BYTES elements need at least a 4-byte length prefix each; fixed-size types are checked
    exactly against the data size afterwards, before anything is allocated, so only rank and
    dimensions are limited here.
    """
    return size // 4 if datatype == "BYTES" else MAX_DIM


def check_tensor_count(inputs: int, outputs: int) -> None:
    """Refuse requests with more than MAX_TENSORS inputs or requested outputs, before decoding any."""
    if inputs > MAX_TENSORS or outputs > MAX_TENSORS:
        raise InvalidArgument(
            f"a request may carry at most {MAX_TENSORS} inputs and {MAX_TENSORS} requested outputs, "
            f"got {inputs} and {outputs}"
        )


def parse_ascii_int(text: str, what: str, max_digits: int = 19) -> int:
    """A non-negative decimal integer of ASCII digits only (``"²".isdigit()`` is true, ``int("²")`` fails)."""
    value = text.strip()
    if not value or not value.isascii() or not value.isdigit() or len(value) > max_digits:
        raise InvalidArgument(f"{what} must be a non-negative integer, got '{text[:40]}'")
    return int(value)


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
        if output.parameters:
            class_count(output, outputs[output.name])


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
