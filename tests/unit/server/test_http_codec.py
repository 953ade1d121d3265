"""The KServe v2 HTTP codec: JSON and binary tensors in, JSON and binary out, typed answers."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from nereid.server.catalog import ModelMetadata, TensorMetadata
from nereid.server.errors import InvalidArgument
from nereid.server.http import codec
from nereid.server.stats import ExecutionRecord, ModelStats
from nereid.server.types import InferRequest, InferResponse, RequestedOutput, Tensor


def body(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_json_tensors_decode_with_shape_datatype_and_parameters() -> None:
    request = codec.decode_request(
        body(
            id="r1",
            inputs=[
                {"name": "A", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "S", "datatype": "BYTES", "shape": [1], "data": ["hé"]},
            ],
            outputs=[{"name": "OUT", "parameters": {"binary_data": True}}],
            parameters={"priority": 2},
        ),
        None,
        "m",
        "3",
    )
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "r1")
    a, s = request.inputs
    assert a.data.dtype == np.int32 and a.data.tolist() == [[1, 2], [3, 4]] and a.shape == (2, 2)
    assert s.data.tolist() == ["hé".encode()]
    assert request.outputs == [RequestedOutput("OUT", {"binary_data": True})]
    assert request.parameters == {"priority": 2}


def test_binary_tensors_follow_the_json_header() -> None:
    values = np.arange(4, dtype=np.float32)
    strings = b"".join(struct.pack("<I", len(x)) + x for x in (b"ab", b""))
    header = body(
        inputs=[
            {"name": "F", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
            {
                "name": "B",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(strings)},
            },
        ]
    )
    request = codec.decode_request(header + values.tobytes() + strings, len(header), "m", "")
    assert np.array_equal(request.inputs[0].data, values)
    assert request.inputs[1].data.tolist() == [b"ab", b""]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[]", "must be a JSON object"),
        (body(inputs=[]), "non-empty 'inputs'"),
        (body(id=5, inputs=[]), "'id' must be a string"),
        (body(inputs=[{"name": "A", "datatype": "FP32", "shape": [3], "data": [1, 2]}]), "A"),
        (b"{not json", "failed to parse"),
    ],
)
def test_malformed_bodies_are_invalid_arguments(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        codec.decode_request(payload, None, "m", "")


def test_binary_data_no_input_claims_is_refused() -> None:
    header = body(inputs=[{"name": "A", "datatype": "INT8", "shape": [1], "data": [1]}])
    with pytest.raises(InvalidArgument, match="no input's binary_data_size claims"):
        codec.decode_request(header + b"xx", len(header), "m", "")
    with pytest.raises(InvalidArgument, match="outside the body"):
        codec.decode_request(header, len(header) + 1, "m", "")


def test_responses_are_json_unless_an_output_asks_for_binary() -> None:
    data = np.array([[1.5, 2.5]], dtype=np.float32)
    response = InferResponse("m", "1", "r", [Tensor("OUT", "FP32", (1, 2), data)])
    payload, length = codec.encode_response(InferRequest("m", []), response)
    assert length is None
    assert orjson.loads(payload) == {
        "model_name": "m",
        "model_version": "1",
        "id": "r",
        "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}],
    }
    binary = InferRequest("m", [], outputs=[RequestedOutput("OUT", {"binary_data": True})])
    payload, length = codec.encode_response(binary, response)
    assert length is not None and payload[length:] == data.tobytes()
    assert orjson.loads(payload[:length])["outputs"][0]["parameters"] == {"binary_data_size": 8}


def test_typed_answers_encode_to_the_v2_json_shapes() -> None:
    meta = ModelMetadata("m", ("1",), "onnxruntime_onnx", (TensorMetadata("X", "FP32", (-1, 4)),), (), True)
    assert orjson.loads(codec.model_metadata_json(meta)) == {
        "name": "m",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [],
    }
    stats = ModelStats()
    stats.record_execution(ExecutionRecord(2, 2, 1, 2, 3))
    (entry,) = orjson.loads(codec.statistics_json([stats.snapshot("m", "1")]))["model_stats"]
    assert entry["inference_count"] == 2 and entry["inference_stats"]["compute_infer"] == {
        "count": 2,
        "ns": 2,
    }
    assert entry["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    assert entry["batch_stats"] == [
        {
            "batch_size": 2,
            "compute_input": {"count": 1, "ns": 1},
            "compute_infer": {"count": 1, "ns": 2},
            "compute_output": {"count": 1, "ns": 3},
        }
    ]
    assert entry["memory_usage"] == []


@pytest.mark.parametrize(
    "payload",
    [
        body(
            inputs=[{"name": "A", "datatype": "INT8", "shape": [1], "data": [1]}],
            outputs=[{"name": "OUT", "parameters": {"binary_data": "yes"}}],
        ),
        body(
            inputs=[{"name": "A", "datatype": "INT8", "shape": [1], "data": [1]}],
            parameters={"binary_data_output": 1},
        ),
    ],
)
def test_binary_flags_must_be_booleans_as_triton_requires(payload: bytes) -> None:
    with pytest.raises(InvalidArgument, match="must be a boolean"):
        codec.decode_request(payload, None, "m", "")
