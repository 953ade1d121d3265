"""The instance base: what a model's instances share, and an in-process instance end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from nereid.backends.base import InstanceContext, ModelContext
from nereid.backends.python.backend import PythonBackend
from nereid.backends.python.inprocess import InProcessInstance
from nereid.proto import model_config_pb2 as mc
from nereid.server.types import InferRequest, Tensor

CONFIG = """
name: "double"
backend: "python"
max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }]
"""
IN_PROCESS = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'

MODEL = """
import json
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return out
"""


def _context(tmp_path: Path, extra: str = "") -> ModelContext:
    version = tmp_path / "double" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(MODEL)
    config = text_format.Parse(CONFIG + extra, mc.ModelConfig())
    config.default_model_filename = "model.py"
    return ModelContext("double", 1, config, tmp_path / "double", version)


def test_args_are_tritons_keys_as_strings(tmp_path: Path):
    model = PythonBackend().load_model(_context(tmp_path))
    args = model.setup.args(InstanceContext("double", 1, "KIND_CPU"))
    assert args["model_instance_name"] == "double_1" and args["model_instance_kind"] == "CPU"
    assert (args["model_name"], args["model_version"], args["model_instance_device_id"]) == (
        "double",
        "1",
        "0",
    )
    assert args["model_repository"] == str(tmp_path / "double")
    config = json.loads(args["model_config"])
    assert config["max_batch_size"] == 4 and config["parameters"] == {} and config["output"][0]["name"] == "Y"


def test_an_in_process_instance_runs_the_model_and_converts_its_responses(tmp_path: Path):
    model = PythonBackend().load_model(_context(tmp_path, IN_PROCESS))
    instance = model.create_instance(InstanceContext("double", 0, "KIND_CPU"))
    assert isinstance(instance, InProcessInstance)
    request = InferRequest("double", [Tensor("X", "FP32", (1, 2), np.array([[1, 2]], np.float32))], id="r")
    try:
        (response,) = instance.execute([request]) or []
    finally:
        instance.finalize()
    assert response.error is None and (response.model_name, response.id) == ("double", "r")
    assert response.output("Y").data.tolist() == [[2, 4]] and response.output("Y").datatype == "FP32"
