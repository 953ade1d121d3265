"""Triton's classification extension: an output returned as its top-N classes.

A requested output with the ``classification`` parameter N (tritonclient's
``InferRequestedOutput(name, class_count=N)``, over HTTP and gRPC alike) comes back as a BYTES
tensor of shape ``[batch, min(N, classes)]`` (``[min(N, classes)]`` without a batch dimension):
the N highest values of each batch row, highest first, each as ``"<value>:<index>[:<label>]"``.
Values print as C++'s ``std::to_string`` does (``0.750000`` for floats), as Triton's do; labels are
the lines of the output's ``label_filename`` in the model folder (no label past its last line).
Only numeric outputs can be classified (not BOOL, FP16, BF16 or BYTES, as in Triton).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument
from nereid.server.model_config import ConfigError, TensorSpec
from nereid.server.types import RequestedOutput, Tensor

PARAMETER = "classification"
_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"})


def class_count(output: RequestedOutput, spec: TensorSpec) -> int | None:
    """The N a requested output asks for (None when it asks for none); InvalidArgument names it."""
    if PARAMETER not in output.parameters:
        return None
    count = output.parameters[PARAMETER]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgument(
            f"output '{output.name}': parameter '{PARAMETER}' must be a positive integer, got {count!r}"
        )
    if spec.datatype not in _TYPES:
        raise InvalidArgument(
            f"class result not available for output '{output.name}' due to unsupported type '{spec.datatype}'"
        )
    return count


def load_labels(config: mc.ModelConfig, model_dir: Path, origin: str) -> dict[str, list[str]]:
    """Each output's labels from its ``label_filename`` (already confined to the model folder)."""
    labels: dict[str, list[str]] = {}
    for index, output in enumerate(config.output):
        if not output.label_filename:
            continue
        path = model_dir / output.label_filename
        try:
            labels[output.name] = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{origin}: output[{index}].label_filename '{output.label_filename}': cannot read: "
                f"{exc.strerror if isinstance(exc, OSError) else exc}"
            ) from None
    return labels


def _text(value: np.generic) -> str:
    if isinstance(value, np.floating):
        return f"{float(value):f}"
    return str(int(value))


def classify(tensor: Tensor, count: int, labels: list[str], batched: bool) -> Tensor:
    """``tensor`` as its top-``count`` classes per batch row (see the module docstring)."""
    rows = tensor.data.reshape(tensor.shape[0] if batched and tensor.shape else 1, -1)
    kept = min(count, rows.shape[1])
    out = np.empty((rows.shape[0], kept), dtype=object)
    for r, row in enumerate(rows):
        # Highest first, equal values lower index first (sorting the reversed row ascending,
        # stably, then reading it backwards; negating would overflow unsigned and INT_MIN).
        order = (len(row) - 1 - np.argsort(row[::-1], kind="stable")[::-1])[:kept]
        for k, index in enumerate(order):
            text = f"{_text(row[index])}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            out[r, k] = text.encode()
    shape = out.shape if batched else (kept,)
    return Tensor(tensor.name, "BYTES", shape, out.reshape(shape))
