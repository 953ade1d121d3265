"""Nereid's triton_python_backend_utils: the API surface Triton model files use."""

from __future__ import annotations

import asyncio
import gc
import json
import pickle

import numpy as np
import pytest

from nereid.backends.python import pb_utils, runtime


class RecordingTarget:
    def __init__(self) -> None:
        self.sent: list[tuple[pb_utils.InferenceResponse | None, bool]] = []
        self.abandoned = 0

    def send(self, response: pb_utils.InferenceResponse | None, final: bool) -> None:
        self.sent.append((response, final))

    def cancelled(self) -> bool:
        return True

    def abandon(self) -> None:
        self.abandoned += 1


def test_tensor_basics_and_types():
    tensor = pb_utils.Tensor("OUT", np.arange(6, dtype=np.int32).reshape(2, 3))
    assert tensor.name() == "OUT" and tensor.shape() == [2, 3] and tensor.is_cpu()
    assert tensor.triton_dtype() == 8 and pb_utils.triton_to_numpy_type(8) is np.int32
    assert (
        pb_utils.numpy_to_triton_type(np.object_) == 13
        and pb_utils.numpy_to_triton_type(np.dtype("S3")) == 13
    )
    assert pb_utils.triton_string_to_numpy("TYPE_FP16") is np.float16
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.Tensor("L", [1.0, 2.0]).as_numpy().dtype == np.float64
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.Tensor("V", np.zeros(2, dtype=[("a", "i4")]))


def test_dlpack_round_trips_without_and_with_torch():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("IN", array)
    back = pb_utils.Tensor.from_dlpack("COPY", tensor.to_dlpack())
    np.testing.assert_array_equal(back.as_numpy(), array)
    np.testing.assert_array_equal(pb_utils.Tensor.from_dlpack("N", array).as_numpy(), array)
    torch = pytest.importorskip("torch")
    from torch.utils.dlpack import to_dlpack

    np.testing.assert_array_equal(torch.from_dlpack(tensor).numpy(), array)
    value = torch.arange(4, dtype=torch.int64)
    np.testing.assert_array_equal(pb_utils.Tensor.from_dlpack("T", to_dlpack(value)).as_numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(pb_utils.Tensor.from_dlpack("T", value).as_numpy(), [0, 1, 2, 3])
    with pytest.raises(pb_utils.TritonModelException, match="BYTES"):
        pb_utils.Tensor("S", np.array([b"a"], dtype=np.object_)).to_dlpack()


def test_errors_and_responses():
    error = pb_utils.TritonError("not here", pb_utils.TritonError.NOT_FOUND)
    assert error.message() == "not here" and error.code() == 2 and error.code_name() == "NOT_FOUND"
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    assert pb_utils.TritonError.CANCELLED == 7
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.TritonError("x", 42)
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.error() is error and response.output_tensors() == []
    with pytest.raises(pb_utils.TritonModelException, match="must be a list"):
        pb_utils.InferenceResponse(output_tensors=pb_utils.Tensor("A", np.zeros(1)))
    exc = pb_utils.TritonModelException("boom")
    assert exc.message() == "boom" and str(exc) == "boom"


def test_request_accessors_and_helpers():
    x = pb_utils.Tensor("X", np.zeros(2))
    request = pb_utils.InferenceRequest(
        model_name=b"m",
        requested_output_names=["Y"],
        inputs=[x],
        request_id="7",
        parameters={"a": 1, "b": "s"},
    )
    assert request.model_name() == "m" and request.request_id() == "7"
    assert pb_utils.get_input_tensor_by_name(request, "X") is x
    assert pb_utils.get_input_tensor_by_name(request, "Z") is None
    assert json.loads(request.parameters()) == {"a": 1, "b": "s"}
    assert request.requested_output_names() == ["Y"] and not request.is_cancelled()
    with pytest.raises(pb_utils.TritonModelException, match="decoupled"):
        request.get_response_sender()
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceRequest(model_name="m", inputs=[np.zeros(2)])
    response = pb_utils.InferenceResponse([x])
    assert pb_utils.get_output_tensor_by_name(response, "X") is x
    config = {
        "input": [{"name": "X", "data_type": "TYPE_FP32"}],
        "output": [],
        "model_transaction_policy": {"decoupled": True},
    }
    assert pb_utils.get_input_config_by_name(config, "X")["data_type"] == "TYPE_FP32"
    assert pb_utils.get_output_config_by_name(config, "X") is None
    assert pb_utils.using_decoupled_model_transaction_policy(config)
    assert not pb_utils.using_decoupled_model_transaction_policy({})
    strings = np.array([b"ab", "c\u00e9"], dtype=np.object_)
    encoded = pb_utils.serialize_byte_tensor(strings)
    assert pb_utils.deserialize_bytes_tensor(encoded.tobytes()).tolist() == [b"ab", "c\u00e9".encode()]


@pytest.fixture
def no_runtime():
    """No BLS runtime, whatever servers earlier tests started."""
    previous = runtime.current()
    runtime.set_default(None)
    yield
    runtime.set_default(previous)


def test_exec_without_a_runtime_is_an_error_response_and_requests_pickle_without_sender(no_runtime):
    request = pb_utils.InferenceRequest(model_name="m", requested_output_names=[], inputs=[])
    response = request.exec()
    assert response.has_error() and response.error().code() == pb_utils.TritonError.UNAVAILABLE
    request._sender = pb_utils.InferenceResponseSender(RecordingTarget())
    request._sender._closed = True
    clone = pickle.loads(pickle.dumps(request))
    assert clone._sender is None and clone.model_name() == "m"


def test_exec_and_async_exec_use_the_bound_runtime():
    class Echo:
        def run(self, request, decoupled):
            outputs = [pb_utils.Tensor(t.name(), t.as_numpy() + 1) for t in request.inputs()]
            return iter([pb_utils.InferenceResponse(outputs)] * (2 if decoupled else 1))

    request = pb_utils.InferenceRequest(model_name="echo", inputs=[pb_utils.Tensor("A", np.zeros(1))])
    with runtime.bound(Echo()):
        assert request.exec().output_tensors()[0].as_numpy().tolist() == [1.0]
        assert len(list(request.exec(decoupled=True))) == 2

        async def both() -> list:
            return await asyncio.gather(request.async_exec(), request.async_exec(decoupled=True))

        single, many = asyncio.run(both())
    assert single.output_tensors()[0].as_numpy().tolist() == [1.0] and len(list(many)) == 2


def test_response_sender_rules():
    target = RecordingTarget()
    sender = pb_utils.InferenceResponseSender(target)
    assert sender.is_cancelled()
    response = pb_utils.InferenceResponse([])
    sender.send(response)
    with pytest.raises(pb_utils.TritonModelException, match="COMPLETE_FINAL"):
        sender.send()
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert target.sent == [(response, False), (None, True)]
    with pytest.raises(pb_utils.TritonModelException, match="closed"):
        sender.send(response)
    closing = pb_utils.InferenceResponseSender(RecordingTarget())
    closing.close()
    assert closing._target.sent == [(None, True)]


def test_a_dropped_sender_abandons_its_request_once():
    target = RecordingTarget()
    sender = pb_utils.InferenceResponseSender(target)
    del sender
    gc.collect()
    assert target.abandoned == 1
    finished = RecordingTarget()
    done = pb_utils.InferenceResponseSender(finished)
    done.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    del done
    gc.collect()
    assert finished.abandoned == 0


def test_model_config_for_auto_complete():
    config = pb_utils.ModelConfig(
        json.dumps(
            {
                "name": "m",
                "max_batch_size": 8,
                "input": [{"name": "A", "data_type": "TYPE_FP32", "dims": [4]}],
            }
        )
    )
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [4]})  # same: fine
    config.add_input({"name": "B", "data_type": "TYPE_INT32", "dims": [1], "optional": True})
    config.add_output({"name": "C", "data_type": "TYPE_STRING", "dims": [-1]})
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32"):
        config.add_input({"name": "A", "data_type": "TYPE_INT8", "dims": [4]})
    with pytest.raises(ValueError, match="expects dims"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [5]})
    with pytest.raises(ValueError, match="missing the 'dims'"):
        config.add_output({"name": "D", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="other than"):
        config.add_output({"name": "D", "data_type": "TYPE_FP32", "dims": [1], "optional": True})
    with pytest.raises(ValueError, match="max_batch_size 8"):
        config.set_max_batch_size(4)
    config.set_max_batch_size(16)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    with pytest.raises(ValueError):
        config.set_model_transaction_policy({"decoupled": False})
    data = config.as_dict()
    assert data["max_batch_size"] == 16 and data["dynamic_batching"] == {}
    assert [i["name"] for i in data["input"]] == ["A", "B"] and data["output"][0]["dims"] == [-1]
    assert data["model_transaction_policy"] == {"decoupled": True}


def test_logger_goes_to_the_server_log(caplog):
    with caplog.at_level("DEBUG", logger="nereid.backends.python.model"):
        pb_utils.Logger.log_info("i")
        pb_utils.Logger.log_warn("w")
        pb_utils.Logger.log_error("e")
        pb_utils.Logger.log_verbose("v")
        pb_utils.Logger.log("x", pb_utils.Logger.ERROR)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "i"),
        ("WARNING", "w"),
        ("ERROR", "e"),
        ("DEBUG", "v"),
        ("ERROR", "x"),
    ]
