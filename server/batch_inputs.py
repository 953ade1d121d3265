"""Ragged batching and batch inputs (Triton's ``allow_ragged_batch`` and ``batch_input``).

A ragged input (``allow_ragged_batch: true``) does not take part in the shape check that
decides which requests may share a batch, and framework backends feed it to the model as one
1-D tensor: the requests' data concatenated. A batch input is a tensor the server makes for
the model once the batch is formed (``target_name``, ``data_type`` TYPE_INT32 or TYPE_FP32),
from the element counts of ``source_input`` in each request of the batch (the request's whole
shape, its batch dimension included), as Triton's backends make them:

* ``BATCH_ELEMENT_COUNT``: ``[n]``, each request's count;
* ``BATCH_ACCUMULATED_ELEMENT_COUNT``: ``[n]``, running totals (where each request ends);
* ``BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO``: ``[n + 1]``, the same with a leading 0;
* ``BATCH_MAX_ELEMENT_COUNT_AS_SHAPE``: shape ``[max count]``, the values carry nothing (zeros);
* ``BATCH_ITEM_SHAPE``: ``[rows, rank - 1]``, each batch row's shape without the batch dimension
  (a request of batch size b gives b equal rows);
* ``BATCH_ITEM_SHAPE_FLATTEN``: the same values as one dimension.

A batch output of kind ``BATCH_SCATTER_WITH_INPUT_SHAPE`` is returned by the model like a ragged
input (flat, all requests' elements in order) and each request gets its part in the shape of its
own ``source_input``. The ONNX Runtime backend implements all of this; the Python backend takes
ragged inputs (it sees each request on its own anyway). Batch inputs and outputs, and ragged
inputs, fail the load on other backends.
"""

from __future__ import annotations

import math

import numpy as np

from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError
from nereid.server.types import InferRequest

Kind = mc.BatchInput.Kind
_DTYPES = {mc.TYPE_INT32: np.int32, mc.TYPE_FP32: np.float32}
#: Backends that implement batch inputs / ragged inputs.
BATCH_INPUT_BACKENDS = frozenset({"onnxruntime"})
RAGGED_BACKENDS = frozenset({"onnxruntime", "python"})


def ragged_inputs(config: mc.ModelConfig) -> frozenset[str]:
    return frozenset(t.name for t in config.input if t.allow_ragged_batch)


class BatchInputs:
    """The ragged inputs and batch inputs of one model, checked at load."""

    def __init__(self, config: mc.ModelConfig, backend: str, origin: str = "config") -> None:
        self.ragged = ragged_inputs(config)
        if self.ragged and backend not in RAGGED_BACKENDS:
            raise ConfigError(
                f"{origin}: input '{min(self.ragged)}': 'allow_ragged_batch' is not supported by backend '{backend}'"
            )
        if self.ragged and config.max_batch_size == 0:
            raise ConfigError(
                f"{origin}: input '{min(self.ragged)}': 'allow_ragged_batch' needs max_batch_size > 0"
            )
        names = {t.name for t in config.input}
        #: Batch outputs: output name -> the input whose shapes scatter it back to the requests.
        self.scatter: dict[str, str] = {}
        outputs = {t.name for t in config.output}
        for index, entry in enumerate(config.batch_output):
            where = f"{origin}: batch_output[{index}]"
            if backend not in BATCH_INPUT_BACKENDS:
                raise ConfigError(f"{where}: batch outputs are not supported by backend '{backend}'")
            if len(entry.source_input) != 1 or entry.source_input[0] not in names:
                raise ConfigError(f"{where}: needs one 'source_input' that is a model input")
            for target in entry.target_name:
                if target not in outputs:
                    raise ConfigError(f"{where}: target_name '{target}' is not a model output")
                self.scatter[target] = entry.source_input[0]
        self.entries: list[tuple[str, int, str, type]] = []
        for index, entry in enumerate(config.batch_input):
            where = f"{origin}: batch_input[{index}]"
            if backend not in BATCH_INPUT_BACKENDS:
                raise ConfigError(f"{where}: batch inputs are not supported by backend '{backend}'")
            if config.max_batch_size == 0:
                raise ConfigError(f"{where}: batch inputs need max_batch_size > 0")
            if len(entry.target_name) != 1 or len(entry.source_input) != 1:
                raise ConfigError(f"{where}: needs exactly one 'target_name' and one 'source_input'")
            if entry.source_input[0] not in names:
                raise ConfigError(f"{where}: source_input '{entry.source_input[0]}' is not a model input")
            if entry.target_name[0] in names:
                raise ConfigError(f"{where}: target_name '{entry.target_name[0]}' is also a model input")
            dtype = _DTYPES.get(entry.data_type)
            if dtype is None:
                raise ConfigError(f"{where}: 'data_type' must be TYPE_INT32 or TYPE_FP32")
            self.entries.append((entry.target_name[0], entry.kind, entry.source_input[0], dtype))

    def __bool__(self) -> bool:
        return bool(self.ragged or self.entries or self.scatter)

    def complete(self, call: list[InferRequest], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The merged inputs of ``call`` with ragged inputs flattened and batch inputs added."""
        for name in self.ragged:
            parts = [t.data.reshape(-1) for r in call if (t := r.input(name)) is not None]
            if parts:
                feed[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        for target, kind, source, dtype in self.entries:
            counts = [math.prod(t.shape) if (t := r.input(source)) is not None else 0 for r in call]
            values: np.ndarray
            if kind == Kind.BATCH_ELEMENT_COUNT:
                values = np.array(counts, dtype=dtype)
            elif kind == Kind.BATCH_ACCUMULATED_ELEMENT_COUNT:
                values = np.cumsum(counts).astype(dtype)
            elif kind == Kind.BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO:
                values = np.concatenate([[0], np.cumsum(counts)]).astype(dtype)
            elif kind == Kind.BATCH_MAX_ELEMENT_COUNT_AS_SHAPE:  # only the shape means something
                values = np.zeros(max(counts, default=0), dtype=dtype)
            else:  # BATCH_ITEM_SHAPE(_FLATTEN): one row per batch row, its shape without dim 0
                shapes = [t.shape for r in call if (t := r.input(source)) is not None]
                rows = [shape[1:] for shape in shapes for _ in range(shape[0])]
                values = np.array(rows, dtype=dtype).reshape(len(rows), -1)
                if kind == Kind.BATCH_ITEM_SHAPE_FLATTEN:
                    values = values.reshape(-1)
            feed[target] = values
        return feed

    def split(self, name: str, array: np.ndarray, call: list[InferRequest]) -> list[np.ndarray] | None:
        """A batch output's part for each request, in its source input's shape (None: not one)."""
        source = self.scatter.get(name)
        if source is None:
            return None
        shapes = [t.shape if (t := r.input(source)) is not None else (0,) for r in call]
        flat = array.reshape(-1)
        if flat.size != sum(math.prod(shape) for shape in shapes):
            raise ValueError(
                f"batch output '{name}' has {flat.size} elements for {sum(math.prod(s) for s in shapes)} "
                f"elements of '{source}'"
            )
        parts, start = [], 0
        for shape in shapes:
            size = math.prod(shape)
            parts.append(flat[start : start + size].reshape(shape))
            start += size
        return parts
