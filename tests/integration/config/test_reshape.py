"""Input/output ``reshape``: clients use the config's dims, backends see the reshape (both transports)."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

SHAPE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            shape = np.array(x.shape, dtype=np.int64)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("SEEN", shape)]
                )
            )
        return responses
"""


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    # ONNX: the graph takes [batch, 2, 2]; clients send [batch, 4].
    module_repo.identity("onnx_reshape", dims="[ 2, 2 ]", max_batch_size=8)
    module_repo.config(
        "onnx_reshape",
        textwrap.dedent(
            """
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
            output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
            dynamic_batching { max_queue_delay_microseconds: 20000 }
            """
        ),
    )
    # ONNX: the classic [1] -> [] (the graph takes [batch]).
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "scalar",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (module_repo.root / "onnx_scalar" / "1").mkdir(parents=True)
    onnx.save(model, str(module_repo.root / "onnx_scalar" / "1" / "model.onnx"))
    module_repo.config(
        "onnx_scalar",
        textwrap.dedent(
            """
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]
            output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]
            """
        ),
    )
    # Python, no batch dimension: [4] arrives as [2, 2]; SEEN reports the shape it saw.
    (module_repo.root / "py_reshape" / "1").mkdir(parents=True)
    (module_repo.root / "py_reshape" / "1" / "model.py").write_text(SHAPE_MODEL)
    module_repo.config(
        "py_reshape",
        textwrap.dedent(
            """
            backend: "python"
            input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
            output [
              { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } },
              { name: "SEEN" data_type: TYPE_INT64 dims: [ 2 ] }
            ]
            """
        ),
    )
    return start_module_server(module_repo.root)


CLIENTS = {"http": (httpclient, "http_url"), "grpc": (grpcclient, "grpc_url")}


def _infer(server, transport: str, model: str, name: str, data: np.ndarray, outputs: list[str]):
    module, attr = CLIENTS[transport]
    client = module.InferenceServerClient(getattr(server, attr))
    tensor = module.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    requested = [module.InferRequestedOutput(o) for o in outputs]
    return client.infer(model, [tensor], outputs=requested)


@pytest.mark.parametrize("transport", CLIENTS)
def test_onnx_sees_the_reshape_and_clients_the_dims(server, transport: str) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = _infer(server, transport, "onnx_reshape", "INPUT0", data, ["OUTPUT0"])
    assert result.as_numpy("OUTPUT0").shape == (3, 4)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    scalar = np.array([[1.5], [2.5]], dtype=np.float32)
    result = _infer(server, transport, "onnx_scalar", "INPUT0", scalar, ["OUTPUT0"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), scalar)


@pytest.mark.parametrize("transport", CLIENTS)
def test_python_sees_the_reshape(server, transport: str) -> None:
    data = np.arange(4, dtype=np.float32)
    result = _infer(server, transport, "py_reshape", "X", data, ["Y", "SEEN"])
    assert result.as_numpy("SEEN").tolist() == [2, 2]
    np.testing.assert_array_equal(result.as_numpy("Y"), data * 2)


@pytest.mark.parametrize("transport", CLIENTS)
def test_clients_must_send_the_config_dims(server, transport: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        _infer(server, transport, "py_reshape", "X", np.zeros((2, 2), np.float32), ["Y"])
    assert "X" in str(info.value)
    assert _infer(server, transport, "py_reshape", "X", np.zeros(4, np.float32), ["Y"]).as_numpy(
        "Y"
    ).shape == (4,)


def test_a_reshape_that_cannot_hold_the_dims_fails_the_load(tmp_path, start_server) -> None:
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.py").write_text(SHAPE_MODEL)
    (tmp_path / "bad" / "config.pbtxt").write_text(
        'backend: "python"\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 3 ] } } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "SEEN" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
    )
    running = start_server(tmp_path, model_control_mode="explicit")
    for module, attr in CLIENTS.values():
        client = module.InferenceServerClient(getattr(running, attr))
        with pytest.raises(InferenceServerException) as info:
            client.load_model("bad")
        assert "input[0] 'X' reshape [3] holds 3 elements but 'dims' [4] hold 4" in str(info.value)
