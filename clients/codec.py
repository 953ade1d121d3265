"""Inference requests on the wire, encoded once per sample before a run starts.

HTTP bodies match what NVIDIA's ``tritonclient.http`` sends for the same arrays (binary: byte
for byte), so a run measures the server as stock clients use it. gRPC requests carry every
input in ``raw_input_contents``, as ``tritonclient.grpc`` does.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np
import orjson

from nereid.clients.inputs import DTYPES, InputTensor

HEADER_LENGTH = "Inference-Header-Content-Length"


def raw_bytes(tensor: InputTensor) -> bytes:
    """Row-major little-endian bytes; BYTES elements each behind a 4-byte little-endian length."""
    if tensor.datatype == "BYTES":
        parts = []
        for item in tensor.data.reshape(-1):
            raw = item.encode() if isinstance(item, str) else bytes(item)
            parts += [struct.pack("<I", len(raw)), raw]
        return b"".join(parts)
    dtype = DTYPES[tensor.datatype].newbyteorder("<")
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def _compact(value: object) -> bytes:
    # tritonclient uses rapidjson, whose default output is compact; match it byte for byte.
    return json.dumps(value, separators=(",", ":")).encode()


def http_binary_body(inputs: Sequence[InputTensor], outputs: Sequence[str] = ()) -> tuple[bytes, int]:
    """Body and JSON header length for the binary tensor data extension; outputs come back binary.

    With no ``outputs`` named, the request asks for all of them with ``binary_data_output``.
    """
    blobs = [raw_bytes(t) for t in inputs]
    request: dict[str, object] = {
        "inputs": [
            {
                "name": t.name,
                "shape": list(t.data.shape),
                "datatype": t.datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
            for t, blob in zip(inputs, blobs, strict=True)
        ]
    }
    if outputs:
        request["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    else:
        request["parameters"] = {"binary_data_output": True}
    header = _compact(request)
    return b"".join([header, *blobs]), len(header)


def http_json_body(inputs: Sequence[InputTensor], outputs: Sequence[str]) -> bytes:
    """A pure JSON request; ``outputs`` are asked for as JSON too (``binary_data: false``)."""
    request: dict[str, object] = {
        "inputs": [
            {"name": t.name, "shape": list(t.data.shape), "datatype": t.datatype, "data": _json_values(t)}
            for t in inputs
        ]
    }
    if outputs:
        request["outputs"] = [{"name": n, "parameters": {"binary_data": False}} for n in outputs]
    return orjson.dumps(request)


def _json_values(tensor: InputTensor) -> list[object]:
    if tensor.datatype in ("FP16", "BF16"):
        raise ValueError(f"input '{tensor.name}': {tensor.datatype} cannot travel as JSON; use binary")
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()


def grpc_request(model: str, version: str, inputs: Sequence[InputTensor]) -> bytes:
    """A serialized ``ModelInferRequest`` with every input in ``raw_input_contents``."""
    from nereid.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for tensor in inputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.data.shape))
        request.raw_input_contents.append(raw_bytes(tensor))
    return request.SerializeToString()
