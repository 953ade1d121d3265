"""Stateful models for the sequence tests, and tritonclient helpers shared by both transports.

* ``onnx_acc``: an ONNX accumulator whose running sum is implicit state
  (``sequence_batching { state [...] }``); it echoes its START and CORRID control inputs.
* ``py_acc``: a Python accumulator on implicit state that reports what ``pb_utils`` shows it
  (``correlation_id()``, ``flags()``).
* ``onnx_init``: ``onnx_acc`` whose state starts from ``initial_state { data_file }`` (100).
* ``torch_acc``: a TorchScript accumulator on implicit state (PyTorch's ``<name>__<index>`` outputs).
* ``bench_acc``: ``bench/models/accumulator`` as shipped (state in the model, keyed by correlation
  id), the model the benchmark runs against Triton.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

BENCH_MODEL = Path(__file__).resolve().parents[3] / "bench" / "models" / "accumulator"
PROTOCOLS = ("http", "grpc")

ONNX_CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

# Random INPUT and state on every instance at load: none of it may reach a sequence's state.
WARMUP = """
model_warmup [ { name: "acc" batch_size: 2 count: 3 inputs [
  { key: "INPUT" value: { data_type: TYPE_FP32 dims: [ 1 ] random_data: true } },
  { key: "ACC_IN" value: { data_type: TYPE_FP32 dims: [ 1 ] random_data: true } },
  { key: "START" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } },
  { key: "CORRID" value: { data_type: TYPE_UINT64 dims: [ 1 ] zero_data: true } }
] } ]
"""


def onnx_accumulator(root: Path, name: str, scheduling: str, count: int = 1, max_batch_size: int = 8) -> None:
    """OUTPUT = ACC_OUT = ACC_IN + INPUT; START_OUT and CORRID_OUT echo the control inputs."""
    io = lambda n, t: helper.make_tensor_value_info(n, t, ["batch", 1])  # noqa: E731
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ACC_IN", "INPUT"], ["ACC_OUT"]),
            helper.make_node("Identity", ["ACC_OUT"], ["OUTPUT"]),
            helper.make_node("Identity", ["START"], ["START_OUT"]),
            helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]),
        ],
        name,
        [
            io("INPUT", TensorProto.FLOAT),
            io("ACC_IN", TensorProto.FLOAT),
            io("START", TensorProto.INT32),
            io("CORRID", TensorProto.UINT64),
        ],
        [
            io("OUTPUT", TensorProto.FLOAT),
            io("ACC_OUT", TensorProto.FLOAT),
            io("START_OUT", TensorProto.INT32),
            io("CORRID_OUT", TensorProto.UINT64),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / name / "1" / "model.onnx"))
    (root / name / "config.pbtxt").write_text(
        f"""
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "START_OUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "CORRID_OUT" data_type: TYPE_UINT64 dims: [ 1 ] }}
]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
sequence_batching {{
  {scheduling}
  {ONNX_CONTROLS}
}}
"""
    )


PY_ACC_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            state = pb_utils.get_input_tensor_by_name(request, "ACC_IN").as_numpy()
            total = state + value
            cid = str(request.correlation_id()).encode()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", total.astype(np.float32)),
                pb_utils.Tensor("ACC_OUT", total.astype(np.float32)),
                pb_utils.Tensor("CID", np.array([[cid]], dtype=np.object_)),
                pb_utils.Tensor("FLAGS", np.array([[request.flags()]], dtype=np.int32)),
            ]))
        return responses
"""

PY_ACC_CONFIG = """
backend: "python"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "CID" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "FLAGS" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  direct { }
  state [ { input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
}
"""


def with_initial_state(root: Path, name: str, data_file: str, value: float | None) -> None:
    """Give ``name``'s state an ``initial_state`` read from ``<model>/initial_state/<data_file>``."""
    state = 'output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 1 ]'
    initial = f'initial_state: {{ name: "init" data_type: TYPE_FP32 dims: [ 1 ] data_file: "{data_file}" }}'
    config = root / name / "config.pbtxt"
    config.write_text(config.read_text().replace(state, f"{state} {initial}"))
    if value is not None:
        (root / name / "initial_state").mkdir(exist_ok=True)
        np.array([value], "<f4").tofile(root / name / "initial_state" / data_file)


TORCH_ACC_CONFIG = """
backend: "pytorch"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
sequence_batching {
  direct { }
  state [ { input_name: "ACC_IN" output_name: "ACC_OUT__1" data_type: TYPE_FP32 dims: [ 1 ] } ]
}
"""


def torch_accumulator(root: Path, name: str) -> None:
    """forward(INPUT, ACC_IN) -> (total, total): the state input follows the config's inputs by name."""
    try:
        import torch
    except ImportError:
        return  # the PyTorch test skips itself

    class Accumulator(torch.nn.Module):
        def forward(self, INPUT: torch.Tensor, ACC_IN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            total = ACC_IN + INPUT
            return total, total

    (root / name / "1").mkdir(parents=True, exist_ok=True)
    torch.jit.script(Accumulator()).save(str(root / name / "1" / "model.pt"))
    (root / name / "config.pbtxt").write_text(TORCH_ACC_CONFIG)


def python_model(root: Path, name: str, config: str, source: str) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "config.pbtxt").write_text(textwrap.dedent(config))
    (root / name / "1" / "model.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def sequence_server(module_repo, start_module_server):
    root = module_repo.root
    onnx_accumulator(root, "onnx_acc", "direct { }", count=2)
    onnx_accumulator(
        root,
        "onnx_acc_oldest",
        "oldest { max_candidate_sequences: 8 preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 2000 }",
        count=2,
    )
    onnx_accumulator(root, "onnx_idle", "max_sequence_idle_microseconds: 200000 direct { }")
    onnx_accumulator(
        root, "onnx_one_slot", "max_sequence_idle_microseconds: 30000000 direct { }", max_batch_size=1
    )
    with (root / "onnx_one_slot" / "config.pbtxt").open("a") as config:
        config.write('parameters { key: "max_sequence_backlog" value: { string_value: "1" } }\n')
    onnx_accumulator(root, "onnx_warm", "direct { }", count=2)
    with (root / "onnx_warm" / "config.pbtxt").open("a") as config:
        config.write(WARMUP)
    python_model(root, "py_acc", PY_ACC_CONFIG, PY_ACC_MODEL)
    torch_accumulator(root, "torch_acc")
    onnx_accumulator(root, "onnx_init", "direct { }")
    with_initial_state(root, "onnx_init", "init.bin", 100.0)
    shutil.copytree(BENCH_MODEL, root / "bench_acc")
    (root / "bench_acc" / "config.pbtxt").write_text(
        (BENCH_MODEL / "config.pbtxt").read_text().replace('name: "accumulator"', 'name: "bench_acc"')
    )
    return start_module_server(root)


class Client:
    """One tritonclient (HTTP or gRPC) with the sequence arguments tritonclient users pass."""

    def __init__(self, running: Any, protocol: str) -> None:
        self.running = running
        self.protocol = protocol
        self.module: Any = httpclient if protocol == "http" else grpcclient
        url = running.http_url if protocol == "http" else running.grpc_url
        self.client = self.module.InferenceServerClient(url)

    def infer(self, model: str, value: float, rows: int = 1, **sequence: Any) -> Any:
        data = np.full((rows, 1), value, dtype=np.float32)
        tensor = self.module.InferInput("INPUT", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        return self.client.infer(model, [tensor], **sequence)

    def total(self, model: str, value: float, **sequence: Any) -> float:
        return float(self.infer(model, value, **sequence).as_numpy("OUTPUT")[0, 0])

    def failure(self, model: str, value: float = 1.0, rows: int = 1, **sequence: Any) -> tuple[str, str]:
        """(status, message) of a request that must fail: HTTP status code or gRPC status name."""
        try:
            self.infer(model, value, rows, **sequence)
        except InferenceServerException as exc:
            # Read here, not kept: a kept traceback holds this client in a cycle that the garbage
            # collector may then free on another thread, which gevent's HTTP client refuses.
            return str(exc.status()).removeprefix("StatusCode."), exc.message()
        raise AssertionError(f"request to '{model}' with {sequence} did not fail")

    def clone(self) -> Client:
        """Another connection (tritonclient clients are not shared between threads)."""
        return Client(self.running, self.protocol)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(params=PROTOCOLS)
def client(request, sequence_server):
    opened = Client(sequence_server, request.param)
    yield opened
    opened.close()
