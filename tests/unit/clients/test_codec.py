"""Request bodies equal what NVIDIA's tritonclient sends for the same arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import _utils as grpc_utils
from tritonclient.grpc import service_pb2
from tritonclient.http import _utils as http_utils

from nereid.clients.codec import grpc_request, http_binary_body, http_json_body, raw_bytes
from nereid.clients.inputs import InputTensor


def _arrays(rng: np.random.Generator) -> list[InputTensor]:
    return [
        InputTensor("INPUT0", "FP32", rng.standard_normal((2, 16)).astype(np.float32)),
        InputTensor("IDS", "INT64", rng.integers(-5, 5, (3,), dtype=np.int64)),
        InputTensor("MASK", "BOOL", rng.integers(0, 2, (2, 2)).astype(bool)),
        InputTensor("HALF", "FP16", rng.standard_normal((4,)).astype(np.float16)),
        InputTensor("TEXT", "BYTES", np.array([b"hello", b"", "w\xf6rld".encode()], dtype=object)),
    ]


def _triton_inputs(module, tensors: list[InputTensor], **kwargs) -> list:
    inputs = []
    for t in tensors:
        tensor = module.InferInput(t.name, list(t.data.shape), t.datatype)
        tensor.set_data_from_numpy(t.data, **kwargs)
        inputs.append(tensor)
    return inputs


def test_binary_body_is_byte_identical_to_tritonclient():
    tensors = _arrays(np.random.default_rng(0))
    expected, expected_length = http_utils._get_inference_request(
        _triton_inputs(httpclient, tensors, binary_data=True), "", None, 0, False, False, 0, None, None
    )
    body, header_length = http_binary_body(tensors)
    assert header_length == expected_length
    assert body == expected


def test_binary_body_with_named_outputs_matches_tritonclient():
    tensors = _arrays(np.random.default_rng(1))[:1]
    outputs = [httpclient.InferRequestedOutput("OUTPUT0"), httpclient.InferRequestedOutput("OUTPUT1")]
    expected, expected_length = http_utils._get_inference_request(
        _triton_inputs(httpclient, tensors, binary_data=True), "", outputs, 0, False, False, 0, None, None
    )
    assert http_binary_body(tensors, ["OUTPUT0", "OUTPUT1"]) == (expected, expected_length)


def test_json_body_means_what_tritonclient_sends():
    tensors = [t for t in _arrays(np.random.default_rng(2)) if t.datatype != "FP16"]
    outputs = [httpclient.InferRequestedOutput("OUT", binary_data=False)]
    expected, length = http_utils._get_inference_request(
        _triton_inputs(httpclient, tensors, binary_data=False), "", outputs, 0, False, False, 0, None, None
    )
    assert length is None
    # Same document; number formatting may differ (orjson here, rapidjson there).
    assert json.loads(http_json_body(tensors, ["OUT"])) == json.loads(expected)


def test_json_body_refuses_half_precision():
    with pytest.raises(ValueError, match="FP16"):
        http_json_body([InputTensor("H", "FP16", np.zeros(2, np.float16))], [])


def test_grpc_request_equals_tritonclients_message():
    tensors = _arrays(np.random.default_rng(3))
    expected = grpc_utils._get_inference_request(
        "add_sub", _triton_inputs(grpcclient, tensors), "2", "", None, 0, False, False, 0, None, None
    )
    parsed = service_pb2.ModelInferRequest.FromString(grpc_request("add_sub", "2", tensors))
    assert parsed == expected


def test_raw_bytes_are_little_endian_and_length_prefixed():
    assert raw_bytes(InputTensor("X", "INT32", np.array([1, 256], dtype=">i4"))) == b"\x01\0\0\0\0\x01\0\0"
    text = raw_bytes(InputTensor("S", "BYTES", np.array(["ab", b"c"], dtype=object)))
    assert text == b"\x02\0\0\0ab\x01\0\0\0c"
