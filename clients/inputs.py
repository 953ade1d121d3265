"""What a load run sends: a model's input specs, and samples built from them or from a JSON file.

Shapes follow perf_analyzer: for a model with ``max_batch_size > 0`` the metadata shape starts
with the batch dimension, ``--shape NAME:d1,d2`` gives the dimensions *after* it, and every
request carries ``[batch_size, d1, d2]``. Without batching, ``--shape`` is the full shape.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nereid.server.datatypes import NUMPY_DTYPES as DTYPES


class InputDataError(ValueError):
    """The model's inputs cannot be filled from the given shapes or data."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    #: As the model metadata reports it; -1 marks a variable dimension.
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A model's metadata plus ``max_batch_size`` from its config (0: no batch dimension)."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], max_batch_size: int, version: str = "") -> ModelSpec:
        """From KServe v2 model metadata (the JSON of ``GET /v2/models/NAME``)."""

        def specs(key: str) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
                for t in metadata.get(key, [])
            )

        return cls(metadata["name"], version, specs("inputs"), specs("outputs"), max_batch_size)


@dataclass(frozen=True)
class InputTensor:
    """One input of one request: its name, API datatype and the full array (batch included)."""

    name: str
    datatype: str
    data: np.ndarray


Sample = list[InputTensor]


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:d1,d2`` -> ``("NAME", (d1, d2))``; the name may itself contain colons."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise InputDataError(f"--shape '{text}' must look like NAME:d1,d2")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise InputDataError(f"--shape '{text}': dimensions must be integers") from None
    if any(d < 0 for d in shape):
        raise InputDataError(f"--shape '{text}': dimensions must be non-negative")
    return name, shape


def request_shapes(
    spec: ModelSpec, overrides: Mapping[str, Sequence[int]] | None = None, batch_size: int = 1
) -> dict[str, tuple[int, ...]]:
    """The full shape (batch dimension included) every input is sent with."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - {t.name for t in spec.inputs}
    if unknown:
        raise InputDataError(f"--shape names unknown inputs: {', '.join(sorted(unknown))}")
    if batch_size < 1:
        raise InputDataError("the batch size must be at least 1")
    if spec.max_batch_size == 0 and batch_size != 1:
        raise InputDataError(f"model '{spec.name}' does not batch (max_batch_size 0); use --batch-size 1")
    if spec.max_batch_size and batch_size > spec.max_batch_size:
        raise InputDataError(
            f"--batch-size {batch_size} exceeds the max_batch_size {spec.max_batch_size} of '{spec.name}'"
        )
    shapes = {}
    for tensor in spec.inputs:
        dims = tensor.shape[1:] if spec.max_batch_size else tensor.shape
        dims = tuple(overrides.get(tensor.name, dims))
        if any(d < 0 for d in dims):
            raise InputDataError(
                f"input '{tensor.name}' has a variable shape {list(tensor.shape)}; "
                f"give one with --shape {tensor.name}:d1,d2"
            )
        shapes[tensor.name] = (batch_size, *dims) if spec.max_batch_size else dims
    return shapes


def random_sample(
    spec: ModelSpec, shapes: Mapping[str, tuple[int, ...]], rng: np.random.Generator, string_length: int = 16
) -> Sample:
    """One request's inputs filled with random values of the right datatype."""
    return [
        InputTensor(t.name, t.datatype, _random_array(t.datatype, shapes[t.name], rng, string_length))
        for t in spec.inputs
    ]


def _random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator, length: int) -> np.ndarray:
    dtype = DTYPES[datatype]
    if datatype == "BYTES":
        letters = rng.integers(ord("a"), ord("z") + 1, (int(np.prod(shape)), length), dtype=np.uint8)
        flat = np.array([row.tobytes() for row in letters] or [], dtype=object)
        return flat.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if datatype == "BF16":
        return (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def load_input_data(
    source: str | Path | Mapping[str, Any] | Sequence[Any],
    spec: ModelSpec,
    overrides: Mapping[str, Sequence[int]] | None = None,
    batch_size: int = 1,
) -> list[Sample]:
    """Samples from perf_analyzer's ``--input-data`` JSON: ``{"data": [{"INPUT0": [...], ...}, ...]}``.

    Each entry holds one batch element per input, as a (nested) list, as
    ``{"content": [...], "shape": [...]}``, or as ``{"b64": "...", "shape": [...]}`` with raw
    little-endian bytes. With batching, that element is repeated ``batch_size`` times.
    """
    document = json.loads(Path(source).read_text()) if isinstance(source, str | Path) else source
    entries = document.get("data") if isinstance(document, Mapping) else document
    if not isinstance(entries, list) or not entries:
        raise InputDataError("input data needs a non-empty 'data' list")
    wanted = {t.name: t for t in spec.inputs}
    dims = _element_dims(spec, overrides)
    samples = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise InputDataError(f"input data entry {index} must be an object of input names")
        missing = [n for n in wanted if n not in entry]
        extra = [n for n in entry if n not in wanted]
        if missing or extra:
            raise InputDataError(
                f"input data entry {index}: missing {missing or 'nothing'}, unknown {extra or 'nothing'}"
            )
        sample = []
        for name, tensor in wanted.items():
            element = _element(entry[name], tensor, dims[name], f"entry {index}, input '{name}'")
            if spec.max_batch_size:
                element = np.stack([element] * batch_size)
            sample.append(InputTensor(name, tensor.datatype, element))
        samples.append(sample)
    return samples


def _element_dims(
    spec: ModelSpec, overrides: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
    overrides = overrides or {}
    dims = {}
    for tensor in spec.inputs:
        base = tensor.shape[1:] if spec.max_batch_size else tensor.shape
        dims[tensor.name] = tuple(overrides.get(tensor.name, base))
    return dims


def _element(value: Any, tensor: TensorSpec, dims: tuple[int, ...], where: str) -> np.ndarray:
    dtype = DTYPES[tensor.datatype]
    shape: Iterable[int] | None = None
    if isinstance(value, Mapping):
        shape = value.get("shape")
        if "b64" in value:
            if tensor.datatype == "BYTES":
                raise InputDataError(f"{where}: b64 data is not supported for BYTES; use strings")
            raw = base64.b64decode(value["b64"])
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
        elif "content" in value:
            array = _from_list(value["content"], tensor.datatype, where)
        else:
            raise InputDataError(f"{where}: an object needs 'content' or 'b64'")
    else:
        array = _from_list(value, tensor.datatype, where)
    target = tuple(shape) if shape is not None else dims
    if array.ndim > 1 and shape is None:
        target = array.shape
    if any(d < 0 for d in target):
        if array.ndim == 1 and sum(d < 0 for d in target) == 1:
            known = int(np.prod([d for d in target if d >= 0]))
            target = tuple(array.size // max(known, 1) if d < 0 else d for d in target)
        else:
            raise InputDataError(f"{where}: variable shape {list(target)}; give 'shape' or --shape")
    if int(np.prod(target)) != array.size:
        raise InputDataError(f"{where}: {array.size} values do not fill shape {list(target)}")
    return array.reshape(target)


def _from_list(value: Any, datatype: str, where: str) -> np.ndarray:
    if not isinstance(value, list):
        value = [value]
    if datatype == "BYTES":
        nested = np.array(value, dtype=object)
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in nested.reshape(-1)]
        return np.array(flat, dtype=object).reshape(nested.shape)
    try:
        return np.asarray(value, dtype=DTYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{where}: not a regular array of {datatype}: {exc}") from None
