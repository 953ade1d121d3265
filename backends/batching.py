"""Merge request inputs along the batch dimension and split outputs back.

The scheduler only puts requests in one call when their non-batch shapes agree, so
concatenation along dim 0 is always valid here.
"""

from __future__ import annotations

import numpy as np

from nereid.server.types import InferRequest


def batch_sizes(requests: list[InferRequest]) -> list[int]:
    return [request.batch_size for request in requests]


def merge_inputs(requests: list[InferRequest]) -> dict[str, np.ndarray]:
    """One array per input name: a single request's data as is, several concatenated on dim 0."""
    if len(requests) == 1:
        return {tensor.name: tensor.data for tensor in requests[0].inputs}
    names = [tensor.name for tensor in requests[0].inputs]
    merged: dict[str, np.ndarray] = {}
    for name in names:
        parts = []
        for request in requests:
            tensor = request.input(name)
            if tensor is None:
                raise ValueError(f"input '{name}' missing from one request of the batch")
            parts.append(tensor.data)
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def split_outputs(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Rows of ``array`` for each request, in order, as views."""
    if len(sizes) == 1:
        return [array]
    if array.shape[0] != sum(sizes):
        raise ValueError(f"output has {array.shape[0]} rows for a batch of {sum(sizes)}")
    out: list[np.ndarray] = []
    start = 0
    for size in sizes:
        out.append(array[start : start + size])
        start += size
    return out
