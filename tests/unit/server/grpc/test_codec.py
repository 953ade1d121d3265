"""The gRPC codec on its own: protobuf messages <-> neutral requests and responses."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from nereid.proto import grpc_service_pb2 as pb
from nereid.server.errors import InvalidArgument, Unsupported
from nereid.server.grpc import codec
from nereid.server.stats import ExecutionRecord, ModelStats
from nereid.server.types import InferResponse, Tensor


def _request(**kwargs) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", **kwargs)


def test_raw_inputs_parameters_outputs_and_id() -> None:
    msg = _request(model_version="3", id="abc")
    msg.inputs.add(name="A", datatype="FP16", shape=[2])
    msg.inputs.add(name="B", datatype="BYTES", shape=[2])
    msg.inputs.add(name="C", datatype="BF16", shape=[1])
    msg.raw_input_contents.extend([
        np.array([1.5, -2], np.float16).tobytes(),
        struct.pack("<I", 3) + b"a\x00b" + struct.pack("<I", 0),
        b"\xc0\x3f",
    ])  # fmt: skip
    msg.parameters["priority"].uint64_param = 2
    msg.parameters["timeout"].int64_param = 5000
    msg.parameters["flag"].bool_param = True
    msg.parameters["temp"].double_param = 0.5
    msg.parameters["tag"].string_param = "x"
    msg.inputs[0].parameters["note"].string_param = "n"
    msg.outputs.add(name="OUT").parameters["classification"].int64_param = 3

    request = codec.decode_request(msg)
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "abc")
    assert request.parameters == {"priority": 2, "timeout": 5000, "flag": True, "temp": 0.5, "tag": "x"}
    a, b, c = request.inputs
    assert a.datatype == "FP16" and a.data.tolist() == [1.5, -2.0] and a.parameters == {"note": "n"}
    assert b.shape == (2,) and b.data.tolist() == [b"a\x00b", b""]
    assert c.data.dtype == np.uint16 and c.data.tolist() == [0x3FC0]
    assert [(o.name, o.parameters) for o in request.outputs] == [("OUT", {"classification": 3})]


def test_typed_contents_convert_to_the_declared_datatype() -> None:
    msg = _request()
    msg.inputs.add(name="I8", datatype="INT8", shape=[3]).contents.int_contents.extend([-1, 0, 127])
    msg.inputs.add(name="U64", datatype="UINT64", shape=[1]).contents.uint64_contents.append(2**64 - 1)
    msg.inputs.add(name="S", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend(
        [b"\xff", b"\x00"]
    )
    msg.inputs.add(name="EMPTY", datatype="FP32", shape=[0, 4])
    i8, u64, s, empty = codec.decode_request(msg).inputs
    assert i8.data.dtype == np.int8 and i8.data.tolist() == [-1, 0, 127]
    assert u64.data.dtype == np.uint64 and int(u64.data[0]) == 2**64 - 1
    assert s.data.shape == (1, 2) and s.data.tolist() == [[b"\xff", b"\x00"]]
    assert empty.data.shape == (0, 4)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: m.inputs.add(name="", datatype="FP32", shape=[1]), "needs a name"),
        (lambda m: m.inputs.add(name="X", datatype="float", shape=[1]), "unknown datatype"),
        (lambda m: m.inputs.add(name="X", datatype="FP32", shape=[-1]), "non-negative"),
        (
            lambda m: m.inputs.add(name="X", datatype="BF16", shape=[1]).contents.fp32_contents.append(1),
            "raw_input",
        ),
        (
            lambda m: m.inputs.add(name="X", datatype="UINT8", shape=[1]).contents.uint_contents.append(256),
            "range",
        ),
        (lambda m: m.inputs.add(name="X", datatype="FP32", shape=[2**62, 2**62]), "number of elements"),
        (lambda m: m.parameters["p"], "has no value"),
    ],
)
def test_invalid_requests(build, message) -> None:
    msg = _request()
    build(msg)
    with pytest.raises(InvalidArgument, match=message):
        codec.decode_request(msg)


def test_absurd_bytes_shape_is_refused_before_allocating() -> None:
    msg = _request()
    msg.inputs.add(name="X", datatype="BYTES", shape=[2**50])
    msg.raw_input_contents.append(b"\x00" * 16)
    with pytest.raises(InvalidArgument, match="cannot hold"):
        codec.decode_request(msg)


def test_shared_memory_is_unsupported() -> None:
    msg = _request()
    msg.outputs.add(name="O").parameters["shared_memory_region"].string_param = "r"
    with pytest.raises(Unsupported):
        codec.decode_request(msg)


def test_encode_response_uses_raw_contents() -> None:
    response = InferResponse(
        model_name="m",
        model_version="1",
        id="r",
        outputs=[
            Tensor("F", "FP32", (2,), np.array([1, 2], np.float32), {"k": 1}),
            Tensor("S", "BYTES", (1,), np.array([b"hi"], dtype=object)),
        ],
        parameters={"done": True, "big": 2**63, "ratio": 0.25, "text": "t"},
    )
    msg = codec.encode_response(response)
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "1", "r")
    assert [(o.name, o.datatype, list(o.shape)) for o in msg.outputs] == [
        ("F", "FP32", [2]),
        ("S", "BYTES", [1]),
    ]
    assert not msg.outputs[0].HasField("contents") and msg.outputs[0].parameters["k"].int64_param == 1
    assert list(msg.raw_output_contents) == [np.array([1, 2], np.float32).tobytes(), b"\x02\x00\x00\x00hi"]
    params = {k: v.WhichOneof("parameter_choice") for k, v in msg.parameters.items()}
    assert params == {
        "done": "bool_param",
        "big": "uint64_param",
        "ratio": "double_param",
        "text": "string_param",
    }


def test_encode_statistics_carries_every_counter() -> None:
    stats = ModelStats()
    stats.record_execution(ExecutionRecord(2, 1, 10, 20, 30))
    stats.record_request(True, 100, 7)
    msg = codec.encode_statistics(stats.snapshot("m", "1"))
    assert (msg.name, msg.version, msg.inference_count, msg.execution_count) == ("m", "1", 2, 1)
    assert msg.inference_stats.success.ns == 100 and msg.inference_stats.queue.ns == 7
    assert msg.inference_stats.compute_output.ns == 30 and msg.inference_stats.cache_hit.count == 0
    assert [(b.batch_size, b.compute_infer.ns) for b in msg.batch_stats] == [(2, 20)]
