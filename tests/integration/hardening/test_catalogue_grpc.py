"""The receive-stage catalogue over gRPC, with raw bytes where a stub would refuse to send them."""

from __future__ import annotations

import json

import grpc
import pytest

from nereid.proto import grpc_service_pb2 as pb

# Field 1 (model_name) of ModelInferRequest as a length-delimited string holding bytes that are not UTF-8.
NOT_UTF8_NAME = b"\x0a\x02\xff\xfe"
BAD_BYTES = {
    "truncated varint": b"\x08\xff\xff\xff",
    "length past the end": b"\x0a\x7f" + b"a" * 10,
    "invalid wire type": b"\x0f\x00",
    "non-UTF-8 model name": NOT_UTF8_NAME,
}


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ModelReady", "RepositoryModelLoad"])
@pytest.mark.parametrize("case", list(BAD_BYTES))
def test_unparsable_messages_are_invalid_argument(hardened, method, case) -> None:
    with pytest.raises(grpc.RpcError) as info:
        hardened.unary_raw(method, BAD_BYTES[case])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "cannot be parsed" in info.value.details()
    hardened.assert_grpc_serving()


def _infer_error(hardened, msg: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        hardened.unary_raw("ModelInfer", msg.SerializeToString())
    return info.value


def test_bad_shapes_are_invalid_argument(hardened) -> None:
    cases = {
        "65 dimensions": ("add_sub", "FP32", [1] * 65, b"\x00" * 4, "more than 64"),
        "BYTES of 2^40 elements": ("bytes_id", "BYTES", [2**40], b"\x00" * 16, "cannot hold"),
        "BYTES of 2^27 elements": ("bytes_id", "BYTES", [2**27], b"", "cannot hold"),
        "negative dimension": ("add_sub", "FP32", [-1, 16], b"", "non-negative"),
    }
    for label, (model, datatype, shape, raw, message) in cases.items():
        msg = pb.ModelInferRequest(model_name=model)
        msg.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
        msg.raw_input_contents.append(raw)
        error = _infer_error(hardened, msg)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, error.details())
        assert message in error.details(), (label, error.details())
    hardened.assert_grpc_serving()


def test_too_many_inputs_are_refused_before_decoding(hardened) -> None:
    msg = pb.ModelInferRequest(model_name="add_sub")
    for i in range(5000):
        msg.inputs.add(name=f"X{i}", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    error = _infer_error(hardened, msg)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1024 inputs" in error.details()


def test_stream_answers_bad_messages_and_keeps_serving(hardened) -> None:
    bad = pb.ModelInferRequest(model_name="add_sub", id="bad-shape")
    bad.inputs.add(name="INPUT0", datatype="FP32", shape=[1] * 65)
    messages = [
        BAD_BYTES["truncated varint"],
        NOT_UTF8_NAME,
        bad.SerializeToString(),
        BAD_BYTES["invalid wire type"],
        hardened.add_sub_message("good").SerializeToString(),
    ]
    responses = list(hardened.stream_raw(messages))
    assert len(responses) == len(messages)
    errors = [r.error_message for r in responses[:-1]]
    assert all(errors), errors
    assert "cannot be parsed" in errors[0] and "more than 64" in errors[2]
    last = responses[-1]
    assert last.error_message == "" and last.infer_response.id == "good"
    assert len(last.infer_response.raw_output_contents) == 2


@pytest.mark.parametrize(
    "filename",
    ["/etc/passwd", "../../../outside/1/model.py", "x/../../../../outside/1/model.py"],
)
def test_load_over_grpc_stays_inside_the_model_folder(hardened, filename) -> None:
    if filename.startswith("/"):
        filename = str(hardened.outside / "1" / "model.py")
    request = pb.RepositoryModelLoadRequest(model_name="pymodel")
    request.parameters["config"].string_param = json.dumps(
        {"backend": "python", "default_model_filename": filename}
    )
    with pytest.raises(grpc.RpcError) as info:
        hardened.unary_raw("RepositoryModelLoad", request.SerializeToString())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "default_model_filename" in info.value.details()
    assert str(hardened.root.parent) not in info.value.details()
    assert not hardened.marker.exists()
    hardened.assert_grpc_serving()


@pytest.mark.parametrize("config", ["null", "[]", "1"])
def test_load_config_that_is_not_an_object_is_invalid_argument(hardened, config) -> None:
    request = pb.RepositoryModelLoadRequest(model_name="add_sub")
    request.parameters["config"].string_param = config
    with pytest.raises(grpc.RpcError) as info:
        hardened.unary_raw("RepositoryModelLoad", request.SerializeToString())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
