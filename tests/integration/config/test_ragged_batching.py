"""Ragged batching and batch inputs: requests of different shapes share one execution."""

from __future__ import annotations

import textwrap
import threading

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

CLIENTS = {"http": (httpclient, "http_url"), "grpc": (grpcclient, "grpc_url")}
LENGTHS = (3, 4, 5)

BATCH_INPUTS = """
batch_input [
  { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "INPUT" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "ACC" data_type: TYPE_INT32 source_input: "INPUT" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "ACC0" data_type: TYPE_INT32
    source_input: "INPUT" },
  { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE target_name: "MAXS" data_type: TYPE_INT32 source_input: "INPUT" },
  { kind: BATCH_ITEM_SHAPE target_name: "ITEM" data_type: TYPE_INT32 source_input: "INPUT" },
  { kind: BATCH_ITEM_SHAPE_FLATTEN target_name: "FLAT" data_type: TYPE_FP32 source_input: "INPUT" }
]
batch_output [ { kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "DOUBLED" source_input: "INPUT" } ]
"""
OUTPUTS = {
    "COUNT_OUT": "INT32",
    "ACC_OUT": "INT32",
    "ACC0_HEAD": "INT32",
    "ACC0_TAIL": "INT32",
    "ITEM_OUT": "INT32",
    "MAX_OUT": "INT64",
    "FLAT_OUT": "FP32",
    "TOTAL": "FP32",
}


def _onnx_model() -> onnx.ModelProto:
    """Per request row: its element count, where it ends, ACC0's 0 and tail, and the MAXS length."""
    const = [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("end", TensorProto.INT64, [1], [2**31]),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["COUNT", "one"], ["COUNT_OUT"]),
        helper.make_node("Unsqueeze", ["ACC", "one"], ["ACC_OUT"]),
        helper.make_node("Shape", ["COUNT_OUT"], ["rows"]),
        helper.make_node("Slice", ["ACC0", "zero", "one"], ["head"]),
        helper.make_node("Expand", ["head", "rows"], ["ACC0_HEAD"]),
        helper.make_node("Slice", ["ACC0", "one", "end"], ["tail"]),
        helper.make_node("Unsqueeze", ["tail", "one"], ["ACC0_TAIL"]),
        helper.make_node("Shape", ["MAXS"], ["longest"]),
        helper.make_node("Expand", ["longest", "rows"], ["MAX_OUT"]),
        helper.make_node("ReduceSum", ["INPUT"], ["total"], keepdims=1),
        helper.make_node("Expand", ["total", "rows"], ["TOTAL"]),
        helper.make_node("Identity", ["ITEM"], ["ITEM_OUT"]),
        helper.make_node("Unsqueeze", ["FLAT", "one"], ["FLAT_OUT"]),
        helper.make_node("Add", ["INPUT", "INPUT"], ["DOUBLED"]),
    ]
    ints = {name: TensorProto.INT32 for name in ("COUNT", "ACC", "ACC0", "MAXS")}
    types = {"INT32": TensorProto.INT32, "INT64": TensorProto.INT64, "FP32": TensorProto.FLOAT}
    graph = helper.make_graph(
        nodes,
        "ragged",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["total"])]
        + [helper.make_tensor_value_info(n, t, [n.lower()]) for n, t in ints.items()]
        + [
            helper.make_tensor_value_info("ITEM", TensorProto.INT32, ["rows", 1]),
            helper.make_tensor_value_info("FLAT", TensorProto.FLOAT, ["rows"]),
        ],
        [helper.make_tensor_value_info(n, types[t], ["n", 1]) for n, t in OUTPUTS.items()]
        + [helper.make_tensor_value_info("DOUBLED", TensorProto.FLOAT, ["total"])],
        initializer=const,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


PY_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        together = np.array([[len(requests)]], dtype=np.int32)
        return [
            pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("SUM", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy().sum(1, keepdims=True)),
                pb_utils.Tensor("TOGETHER", together),
            ])
            for r in requests
        ]
"""


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    outputs = ", ".join(f'{{ name: "{n}" data_type: TYPE_{t} dims: [ 1 ] }}' for n, t in OUTPUTS.items())
    (module_repo.root / "onnx_ragged" / "1").mkdir(parents=True)
    onnx.save(_onnx_model(), str(module_repo.root / "onnx_ragged" / "1" / "model.onnx"))
    module_repo.config(
        "onnx_ragged",
        textwrap.dedent(
            f"""
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
            output [ {outputs}, {{ name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] }} ]
            dynamic_batching {{ preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 2000000 }}
            """
        )
        + BATCH_INPUTS,
    )
    (module_repo.root / "py_ragged" / "1").mkdir(parents=True)
    (module_repo.root / "py_ragged" / "1" / "model.py").write_text(PY_MODEL)
    module_repo.config(
        "py_ragged",
        textwrap.dedent(
            """
            backend: "python"
            max_batch_size: 8
            input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
            output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "TOGETHER" data_type: TYPE_INT32 dims: [ 1 ] } ]
            dynamic_batching { preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 2000000 }
            """
        ),
    )
    return start_module_server(module_repo.root)


def _send_together(server, transport: str, model: str) -> dict[int, dict[str, np.ndarray]]:
    """Requests of 3, 4 and 5 elements at once; each one's outputs by its length."""
    module, attr = CLIENTS[transport]
    results: dict[int, dict[str, np.ndarray]] = {}

    def call(length: int) -> None:
        client = module.InferenceServerClient(getattr(server, attr))
        tensor = module.InferInput("INPUT", [1, length], "FP32")
        tensor.set_data_from_numpy(np.full((1, length), length, dtype=np.float32))
        result = client.infer(model, [tensor])
        results[length] = {o["name"]: result.as_numpy(o["name"]) for o in _outputs(result)}

    threads = [threading.Thread(target=call, args=(n,)) for n in LENGTHS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _outputs(result):
    response = result.get_response()
    if isinstance(response, dict):
        return response["outputs"]
    return [{"name": o.name} for o in response.outputs]


@pytest.mark.parametrize("transport", CLIENTS)
def test_onnx_gets_flat_ragged_input_and_element_counts(server, transport: str) -> None:
    results = _send_together(server, transport, "onnx_ragged")
    assert sorted(results) == list(LENGTHS)
    # Each request's rows end where the next one's start: the batch is their flat concatenation.
    ends = {int(r["ACC_OUT"][0, 0]) for r in results.values()}
    starts = {int(r["ACC_OUT"][0, 0] - r["COUNT_OUT"][0, 0]) for r in results.values()}
    assert max(ends) == sum(LENGTHS) and starts == {0} | (ends - {sum(LENGTHS)})
    for length, outputs in results.items():
        assert outputs["COUNT_OUT"].tolist() == [[length]]
        assert outputs["ACC0_HEAD"].tolist() == [[0]]
        assert outputs["ACC0_TAIL"].tolist() == outputs["ACC_OUT"].tolist()
        assert outputs["MAX_OUT"].tolist() == [[5]]  # all three ran in one batch
        assert outputs["TOTAL"].tolist() == [[3 * 3 + 4 * 4 + 5 * 5]]
        assert outputs["ITEM_OUT"].tolist() == [[length]]
        assert outputs["FLAT_OUT"].tolist() == [[float(length)]]
        assert outputs["DOUBLED"].tolist() == [[2.0 * length] * length]  # scattered in INPUT's shape


@pytest.mark.parametrize("transport", CLIENTS)
def test_python_runs_ragged_requests_together(server, transport: str) -> None:
    results = _send_together(server, transport, "py_ragged")
    for length, outputs in results.items():
        assert outputs["SUM"].tolist() == [[length * length]]
        assert outputs["TOGETHER"].tolist() == [[3]]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            'backend: "python"\nmax_batch_size: 4\ninput [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT32 source_input: "INPUT" } ]',
            "batch_input[0]: batch inputs are not supported by backend 'python'",
        ),
        (
            'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            'batch_input [ { kind: BATCH_ITEM_SHAPE target_name: "INPUT" data_type: TYPE_INT32 source_input: "INPUT" } ]',
            "target_name 'INPUT' is also a model input",
        ),
        (
            'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT64 source_input: "INPUT" } ]',
            "'data_type' must be TYPE_INT32 or TYPE_FP32",
        ),
        (
            'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            'batch_output [ { kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "O" source_input: "INPUT" } ]',
            "batch_output[0]: target_name 'O' is not a model output",
        ),
    ],
)
def test_unsupported_batch_configs_fail_the_load(tmp_path, start_server, config: str, fragment: str) -> None:
    (tmp_path / "bad" / "1").mkdir(parents=True)
    onnx.save(_onnx_model(), str(tmp_path / "bad" / "1" / "model.onnx"))
    (tmp_path / "bad" / "1" / "model.py").write_text(PY_MODEL)
    (tmp_path / "bad" / "config.pbtxt").write_text(
        config + '\noutput [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    running = start_server(tmp_path, model_control_mode="explicit")
    for module, attr in CLIENTS.values():
        with pytest.raises(InferenceServerException) as info:
            module.InferenceServerClient(getattr(running, attr)).load_model("bad")
        assert fragment in str(info.value)
