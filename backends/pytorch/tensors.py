"""numpy <-> torch for request tensors: datatype names, BF16 bit patterns, device moves.

Nereid carries BF16 as ``uint16`` bit patterns (see :mod:`nereid.server.datatypes`), so a
BF16 input is a ``uint16`` array viewed as ``torch.bfloat16`` and a BF16 output goes back
the same way. BYTES has no tensor form in torch and is refused at load time.
"""

from __future__ import annotations

import numpy as np
import torch

from nereid.server.errors import InternalError

API_TO_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
TORCH_TO_API: dict[torch.dtype, str] = {v: k for k, v in API_TO_TORCH.items()}


def to_torch(array: np.ndarray, datatype: str, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` holding ``array`` (shared with it on CPU when that is safe)."""
    if not array.flags.writeable:
        # Request data is often a read-only view of the wire buffer; torch must not write to it.
        array = array.copy()
    tensor = torch.from_numpy(array)
    if datatype == "BF16":
        tensor = tensor.view(torch.bfloat16)
    if tensor.device != device:
        tensor = tensor.to(device)
    return tensor


def to_numpy(tensor: torch.Tensor, what: str) -> tuple[str, np.ndarray]:
    """(API datatype, host array) of an output tensor; ``what`` names it in errors."""
    datatype = TORCH_TO_API.get(tensor.dtype)
    if datatype is None:
        raise InternalError(f"{what} has dtype {tensor.dtype}, which has no KServe v2 datatype")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if datatype == "BF16":
        tensor = tensor.view(torch.uint16)
    return datatype, tensor.contiguous().numpy()
