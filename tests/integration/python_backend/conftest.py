"""Python-backend model repositories: model files written as in Triton's public examples."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ADD_SUB_MODEL = """
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        output0_dtype = self.output0_dtype
        output1_dtype = self.output1_dtype
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            out_0, out_1 = (
                in_0.as_numpy() + in_1.as_numpy(),
                in_0.as_numpy() - in_1.as_numpy(),
            )
            out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(output0_dtype))
            out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(output1_dtype))
            inference_response = pb_utils.InferenceResponse(output_tensors=[out_tensor_0, out_tensor_1])
            responses.append(inference_response)
        return responses

    def finalize(self):
        print("Cleaning up...")
"""

ADD_SUB_CONFIG = """
name: "{name}"
backend: "python"
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
instance_group [{{ kind: KIND_CPU }}]
{extra}
"""

# Triton's examples/decoupled/repeat_model.py, in its current form (send with the FINAL flag).
REPEAT_MODEL = '''
import json
import threading
import time

import numpy
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        using_decoupled = pb_utils.using_decoupled_model_transaction_policy(model_config)
        if not using_decoupled:
            raise pb_utils.TritonModelException(
                """the model `{}` can generate any number of responses per request,
                enable decoupled transaction policy in model configuration to
                serve this model""".format(args["model_name"])
            )
        out_config = pb_utils.get_output_config_by_name(model_config, "OUT")
        idx_config = pb_utils.get_output_config_by_name(model_config, "IDX")
        self.out_dtype = pb_utils.triton_string_to_numpy(out_config["data_type"])
        self.idx_dtype = pb_utils.triton_string_to_numpy(idx_config["data_type"])
        self.inflight_thread_count = 0
        self.inflight_thread_count_lck = threading.Lock()

    def execute(self, requests):
        if len(requests) != 1:
            raise pb_utils.TritonModelException("unsupported batch size " + str(len(requests)))
        thread = threading.Thread(
            target=self.response_thread,
            args=(
                requests[0].get_response_sender(),
                pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy(),
                pb_utils.get_input_tensor_by_name(requests[0], "DELAY").as_numpy(),
            ),
        )
        thread.daemon = True
        with self.inflight_thread_count_lck:
            self.inflight_thread_count += 1
        thread.start()
        wait_input = pb_utils.get_input_tensor_by_name(requests[0], "WAIT").as_numpy()
        time.sleep(wait_input[0] / 1000)
        return None

    def response_thread(self, response_sender, in_input, delay_input):
        for idx in range(in_input.size):
            in_value = in_input[idx]
            delay_value = delay_input[idx]
            time.sleep(delay_value / 1000)
            idx_output = pb_utils.Tensor("IDX", numpy.array([idx], self.idx_dtype))
            out_output = pb_utils.Tensor("OUT", numpy.array([in_value], self.out_dtype))
            response = pb_utils.InferenceResponse(output_tensors=[idx_output, out_output])
            response_sender.send(response)
        response_sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        with self.inflight_thread_count_lck:
            self.inflight_thread_count -= 1

    def finalize(self):
        inflight_threads = True
        while inflight_threads:
            with self.inflight_thread_count_lck:
                inflight_threads = self.inflight_thread_count != 0
            if inflight_threads:
                time.sleep(0.1)
'''

REPEAT_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: True }}
input [
  {{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] }},
  {{ name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
output [
  {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
instance_group [{{ count: 1 kind: KIND_CPU }}]
{extra}
"""

# Triton's examples/bls/sync_model.py: the model to call arrives as the MODEL_NAME input.
BLS_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            model_name = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME")
            model_name_string = model_name.as_numpy()[0]
            infer_request = pb_utils.InferenceRequest(
                model_name=model_name_string,
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[in_0, in_1],
            )
            infer_response = infer_request.exec()
            if infer_response.has_error():
                raise pb_utils.TritonModelException(infer_response.error().message())
            inference_response = pb_utils.InferenceResponse(output_tensors=infer_response.output_tensors())
            responses.append(inference_response)
        return responses
"""

# Triton's examples/bls/async_model.py: two BLS calls in flight, awaited together.
ASYNC_BLS_MODEL = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            model_name_string = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME").as_numpy()[0]
            awaits = [
                pb_utils.InferenceRequest(
                    model_name=model_name_string, requested_output_names=[name], inputs=[in_0, in_1]
                ).async_exec()
                for name in ("OUTPUT0", "OUTPUT1")
            ]
            first, second = await asyncio.gather(*awaits)
            for response in (first, second):
                if response.has_error():
                    raise pb_utils.TritonModelException(response.error().message())
            out_0 = pb_utils.get_output_tensor_by_name(first, "OUTPUT0")
            out_1 = pb_utils.get_output_tensor_by_name(second, "OUTPUT1")
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", np.asarray(out_0.as_numpy())),
                pb_utils.Tensor.from_dlpack("OUTPUT1", out_1.to_dlpack()),
            ]))
        return responses
"""

BLS_CONFIG = """
name: "{name}"
backend: "python"
input [
  {{ name: "MODEL_NAME" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
instance_group [{{ kind: KIND_CPU }}]
{extra}
"""


class PythonRepo:
    """Writes Python-backend models (``config.pbtxt`` + ``1/model.py``) under one repository root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def model(self, name: str, config: str, source: str, version: int = 1) -> Path:
        folder = self.root / name
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(textwrap.dedent(config))
        (folder / str(version) / "model.py").write_text(textwrap.dedent(source))
        return folder

    def add_sub(self, name: str = "add_sub", extra: str = "") -> Path:
        return self.model(name, ADD_SUB_CONFIG.format(name=name, extra=extra), ADD_SUB_MODEL)

    def repeat(self, name: str = "repeat", extra: str = "") -> Path:
        return self.model(name, REPEAT_CONFIG.format(name=name, extra=extra), REPEAT_MODEL)

    def bls(self, name: str = "bls", extra: str = "", source: str = BLS_MODEL) -> Path:
        return self.model(name, BLS_CONFIG.format(name=name, extra=extra), source)

    def async_bls(self, name: str = "async_bls", extra: str = "") -> Path:
        return self.bls(name, extra, ASYNC_BLS_MODEL)


@pytest.fixture
def py_repo(repo) -> PythonRepo:
    return PythonRepo(repo.root)
