"""BF16 end to end: 2-byte raw data on the wire (as Triton), an ONNX model with BF16 inputs and outputs,
and a Python model passing BF16 through DLPack (torch.bfloat16) in both modes; HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper

pytest.importorskip("torch")

IN_PROCESS = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'

# Doubles X in torch after a DLPack round trip, and reports the dtype torch saw.
PYTHON_MODEL = """
import numpy as np
import torch
import torch.utils.dlpack
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = torch.utils.dlpack.from_dlpack(pb_utils.get_input_tensor_by_name(request, "X").to_dlpack())
            x.mul_(1)  # the model owns what it was handed: writing must not fail
            y = pb_utils.Tensor.from_dlpack("Y", torch.utils.dlpack.to_dlpack(x * 2))
            seen = pb_utils.Tensor("DTYPE", np.array([str(x.dtype).encode()], dtype=object))
            responses.append(pb_utils.InferenceResponse([y, seen]))
        return responses
"""

PYTHON_CONFIG = """
backend: "python"
input [{ name: "X" data_type: TYPE_BF16 dims: [ -1 ] }]
output [{ name: "Y" data_type: TYPE_BF16 dims: [ -1 ] }, { name: "DTYPE" data_type: TYPE_STRING dims: [ 1 ] }]
"""


def _onnx_bf16_model(folder: Path) -> None:
    """Y = bf16(2 * float(X)) and F = float(X): BF16 in, BF16 and FP32 out."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["X"], ["F"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["F", "F"], ["D"]),
            helper.make_node("Cast", ["D"], ["Y"], to=TensorProto.BFLOAT16),
        ],
        "bf16",
        [helper.make_tensor_value_info("X", TensorProto.BFLOAT16, ["n"])],
        [
            helper.make_tensor_value_info("Y", TensorProto.BFLOAT16, ["n"]),
            helper.make_tensor_value_info("F", TensorProto.FLOAT, ["n"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\n'
        'input [{ name: "X" data_type: TYPE_BF16 dims: [ -1 ] }]\n'
        'output [{ name: "Y" data_type: TYPE_BF16 dims: [ -1 ] }, { name: "F" data_type: TYPE_FP32 dims: [ -1 ] }]\n'
    )


@pytest.fixture(scope="module")
def server(module_repo: Any, start_module_server: Any) -> Any:
    _onnx_bf16_model(module_repo.root / "onnx_bf16")
    for name, extra in (("py_bf16_stub", ""), ("py_bf16_inprocess", IN_PROCESS)):
        folder = module_repo.root / name
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(PYTHON_MODEL)
        (folder / "config.pbtxt").write_text(PYTHON_CONFIG + extra)
    return start_module_server(module_repo.root)


VALUES = np.array([1.0, -2.5, 3.0, 0.15625], np.float32)  # exact in bfloat16


def _infer(server: Any, protocol: str, model: str, outputs: list[str]) -> Any:
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    with module.InferenceServerClient(url) as client:
        x = module.InferInput("X", [len(VALUES)], "BF16")
        if protocol == "http":
            x.set_data_from_numpy(VALUES, binary_data=True)
            wanted = [module.InferRequestedOutput(n, binary_data=True) for n in outputs]
        else:
            x.set_data_from_numpy(VALUES)
            wanted = [module.InferRequestedOutput(n) for n in outputs]
        return client.infer(model, [x], outputs=wanted)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_onnx_model_with_bf16_inputs_and_outputs(server, protocol):
    result = _infer(server, protocol, "onnx_bf16", ["Y", "F"])
    np.testing.assert_array_equal(result.as_numpy("F"), VALUES)
    np.testing.assert_array_equal(result.as_numpy("Y"), VALUES * 2)  # tritonclient gives BF16 as float32
    output = result.get_output("Y")
    datatype = output["datatype"] if protocol == "http" else output.datatype
    assert datatype == "BF16"


@pytest.mark.parametrize("model", ["py_bf16_stub", "py_bf16_inprocess"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_python_model_passes_bf16_through_dlpack(server, protocol, model):
    result = _infer(server, protocol, model, ["Y", "DTYPE"])
    assert result.as_numpy("DTYPE").tolist() == [b"torch.bfloat16"]
    np.testing.assert_array_equal(result.as_numpy("Y"), VALUES * 2)


def test_bf16_is_two_bytes_an_element_on_the_wire(server):
    result = _infer(server, "http", "onnx_bf16", ["Y"])
    assert result.get_output("Y")["parameters"]["binary_data_size"] == 2 * len(VALUES)
