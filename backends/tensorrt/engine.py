"""What a TensorRT engine declares: its I/O tensors with datatypes, shapes and profile limits.

Reads only the name-based I/O API (``num_io_tensors``, ``get_tensor_*``) that TensorRT 8.5
introduced and 10 and 11 keep. ``trt`` is the imported ``tensorrt`` module, passed in so that
nothing here imports it (and so tests can pass a stand-in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nereid.server.errors import InvalidArgument

# TensorRT DataType member -> (API datatype, torch dtype name). Looked up by name, since the
# set of members differs between TensorRT versions; FP8/INT4/FP4 have no API datatype.
_TRT_TYPES = (
    ("FLOAT", "FP32", "float32"),
    ("HALF", "FP16", "float16"),
    ("BF16", "BF16", "bfloat16"),
    ("INT8", "INT8", "int8"),
    ("INT32", "INT32", "int32"),
    ("INT64", "INT64", "int64"),
    ("BOOL", "BOOL", "bool"),
    ("UINT8", "UINT8", "uint8"),
)


def datatypes(trt: Any) -> dict[Any, tuple[str, str]]:
    """TensorRT DataType -> (API datatype, torch dtype name) for the members this TensorRT has."""
    return {
        getattr(trt.DataType, name): (api, torch_name)
        for name, api, torch_name in _TRT_TYPES
        if hasattr(trt.DataType, name)
    }


@dataclass(frozen=True, slots=True)
class EngineTensor:
    """One I/O tensor of an engine; -1 marks a dimension fixed only at run time."""

    name: str
    is_input: bool
    datatype: str
    torch_dtype: str
    shape: tuple[int, ...]
    # Largest shape optimisation profile 0 accepts (inputs with dynamic dims only).
    profile_max: tuple[int, ...] | None = None


def describe(model: str, engine: Any, trt: Any) -> list[EngineTensor]:
    """The engine's I/O tensors in engine order; raises for tensors Nereid cannot feed."""
    table = datatypes(trt)
    tensors: list[EngineTensor] = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        trt_type = engine.get_tensor_dtype(name)
        if trt_type not in table:
            raise InvalidArgument(
                f"model '{model}': engine tensor '{name}' has TensorRT type {trt_type}, which has no "
                f"KServe v2 datatype"
            )
        if is_input and engine.is_shape_inference_io(name):
            raise InvalidArgument(
                f"model '{model}': engine input '{name}' is a shape tensor (read on the host), which the "
                f"TensorRT backend does not support"
            )
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        profile_max = None
        if is_input and -1 in shape and engine.num_optimization_profiles > 0:
            profile_max = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
        api, torch_name = table[trt_type]
        tensors.append(EngineTensor(name, is_input, api, torch_name, shape, profile_max))
    return tensors


def batch_limit(tensors: list[EngineTensor]) -> int:
    """The max_batch_size an engine supports when dim 0 of every I/O tensor is dynamic, else 0.

    The limit is the smallest dim-0 maximum over the inputs' profile 0 (Triton's rule for
    explicit-batch engines).
    """
    if not tensors or any(not t.shape or t.shape[0] != -1 for t in tensors):
        return 0
    limits = [t.profile_max[0] for t in tensors if t.is_input and t.profile_max]
    return max(0, min(limits)) if limits else 0
