"""Triton-style model.py files served by a real server: add_sub, decoupled repeat, BLS, preprocess."""

from __future__ import annotations

import queue
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.server.types import InferRequest, Tensor

EXAMPLES = Path(__file__).resolve().parents[3] / "model_repository"
IN_PROCESS = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'


def _add_sub_inputs(
    a: np.ndarray, b: np.ndarray, model_name: str | None = None
) -> list[httpclient.InferInput]:
    inputs = []
    if model_name is not None:
        name = httpclient.InferInput("MODEL_NAME", [1], "BYTES")
        name.set_data_from_numpy(np.array([model_name.encode()], dtype=np.object_))
        inputs.append(name)
    for tensor_name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = httpclient.InferInput(tensor_name, list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def _repeat_request(values: list[int], model: str = "repeat") -> InferRequest:
    count = len(values)
    return InferRequest(
        model,
        [
            Tensor("IN", "INT32", (count,), np.array(values, np.int32)),
            Tensor("DELAY", "UINT32", (count,), np.full(count, 5, np.uint32)),
            Tensor("WAIT", "UINT32", (1,), np.array([1], np.uint32)),
        ],
        id="stream-1",
    )


def _collect(running, request: InferRequest) -> list:
    async def collect() -> list:
        return [response async for response in running.core.stream(request)]

    return running.call(collect())


def test_add_sub_example_over_http(py_repo, start_server):
    py_repo.add_sub()
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    a, b = np.arange(4, dtype=np.float32), np.full(4, 2, dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, b), request_id="r7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r7"
    only = client.infer(
        "add_sub", _add_sub_inputs(a, b), outputs=[httpclient.InferRequestedOutput("OUTPUT1")]
    )
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)
    metadata = client.get_model_metadata("add_sub")
    assert metadata["platform"] == "python"


def test_decoupled_repeat_through_the_core(py_repo, start_server):
    py_repo.repeat()
    running = start_server(py_repo.root)
    responses = _collect(running, _repeat_request([4, 2, 0, 7]))
    assert [r.error for r in responses] == [None] * 4
    assert [int(r.output("OUT").data[0]) for r in responses] == [4, 2, 0, 7]
    assert [int(r.output("IDX").data[0]) for r in responses] == [0, 1, 2, 3]
    assert {r.id for r in responses} == {"stream-1"}
    assert _collect(running, _repeat_request([])) == []  # only the empty final


def test_decoupled_repeat_over_grpc_stream(py_repo, start_server):
    pytest.importorskip("nereid.server.grpc.server")
    import tritonclient.grpc as grpcclient

    py_repo.repeat()
    running = start_server(py_repo.root)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: results.put((result, error)))
    try:
        inputs = []
        for name, datatype, data in (
            ("IN", "INT32", np.array([5, 6, 7], np.int32)),
            ("DELAY", "UINT32", np.zeros(3, np.uint32)),
            ("WAIT", "UINT32", np.zeros(1, np.uint32)),
        ):
            tensor = grpcclient.InferInput(name, list(data.shape), datatype)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        client.async_stream_infer("repeat", inputs, request_id="g1")
        got = [results.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()
    assert [error for _, error in got] == [None] * 3
    assert [int(result.as_numpy("OUT")[0]) for result, _ in got] == [5, 6, 7]


def test_decoupled_model_that_drops_its_sender_fails_instead_of_hanging(py_repo, start_server):
    py_repo.model(
        "forgetful",
        """
        backend: "python"
        model_transaction_policy { decoupled: true }
        input [{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }]
        output [{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }]
    """,
        """
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                for request in requests:
                    sender = request.get_response_sender()
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))]))
                return None
    """,
    )
    running = start_server(py_repo.root)
    request = InferRequest("forgetful", [Tensor("IN", "INT32", (1,), np.array([3], np.int32))], id="f1")
    first, last = _collect(running, request)
    assert first.error is None and int(first.output("OUT").data[0]) == 1
    assert "forgetful" in last.error.message and "TRITONSERVER_RESPONSE_COMPLETE_FINAL" in last.error.message


def test_bls_calls_another_model_in_process(py_repo, start_server):
    py_repo.add_sub()
    py_repo.bls(extra=IN_PROCESS)
    py_repo.async_bls(extra=IN_PROCESS)
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    a, b = np.linspace(0, 1, 4, dtype=np.float32), np.ones(4, dtype=np.float32)
    for model in ("bls", "async_bls"):
        result = client.infer(model, _add_sub_inputs(a, b, model_name="add_sub"))
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)
    with pytest.raises(InferenceServerException, match="no_such_model"):
        client.infer("bls", _add_sub_inputs(a, b, model_name="no_such_model"))


def test_auto_complete_config_fills_a_minimal_config(py_repo, start_server):
    py_repo.model(
        "auto",
        'backend: "python"\n',
        """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(auto_complete_model_config):
                auto_complete_model_config.add_input({"name": "X", "data_type": "TYPE_INT64", "dims": [2]})
                auto_complete_model_config.add_output({"name": "Y", "data_type": "TYPE_INT64", "dims": [2]})
                auto_complete_model_config.set_max_batch_size(4)
                auto_complete_model_config.set_dynamic_batching()
                return auto_complete_model_config

            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", r.inputs()[0].as_numpy() * 2)])
                        for r in requests]
    """,
    )
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    config = client.get_model_config("auto")
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("X", "TYPE_INT64", [2])]
    tensor = httpclient.InferInput("X", [1, 2], "INT64")
    tensor.set_data_from_numpy(np.array([[3, 4]], np.int64))
    np.testing.assert_array_equal(client.infer("auto", [tensor]).as_numpy("Y"), [[6, 8]])


def test_preprocess_example_model(tmp_path, start_server):
    root = tmp_path / "models"
    shutil.copytree(
        EXAMPLES / "preprocess", root / "preprocess", ignore=shutil.ignore_patterns("__pycache__")
    )
    running = start_server(root)
    client = httpclient.InferenceServerClient(running.http_url)
    texts = np.array([["  Hello   WORLD \n"], ["\uff21\uff22\uff23\tdef"], [""]], dtype=np.object_)
    tensor = httpclient.InferInput("TEXT", [3, 1], "BYTES")
    tensor.set_data_from_numpy(texts)
    result = client.infer("preprocess", [tensor])
    assert result.as_numpy("NORMALIZED").tolist() == [[b"hello world"], [b"abc def"], [b""]]
    assert result.as_numpy("LENGTH").tolist() == [[11], [7], [0]]
    assert result.as_numpy("LENGTH").dtype == np.int32
    bad = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="UTF-8") as caught:
        client.infer("preprocess", [bad])
    assert caught.value.status() == "400"
