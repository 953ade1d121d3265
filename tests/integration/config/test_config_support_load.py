"""Refused config fields fail the load API naming them (both transports); warned ones log once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
            for r in requests
        ]
"""
BASE = {
    "backend": "python",
    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
}


@pytest.fixture
def running(tmp_path: Path, start_server):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text(MODEL)
    return start_server(tmp_path, model_control_mode="explicit")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (
            {"model_operations": {"op_library_filename": ["libcustom.so"]}},
            "model_operations.op_library_filename",
        ),
        ({"runtime": "libtriton_python.so"}, "runtime"),
        (
            {"instance_group": [{"kind": "KIND_CPU", "secondary_devices": [{"device_id": 1}]}]},
            "instance_group.secondary_devices.device_id",
        ),
    ],
)
def test_refused_fields_fail_the_load_api_naming_them(running, extra: dict, field: str) -> None:
    config = json.dumps({**BASE, **extra})
    http = httpclient.InferenceServerClient(running.http_url)
    with pytest.raises(InferenceServerException) as info:
        http.load_model("m", config=config)
    assert info.value.status() == "400" and f"field '{field}' is not supported by Nereid" in str(info.value)
    grpc = grpcclient.InferenceServerClient(running.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        grpc.load_model("m", config=config)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and f"field '{field}'" in str(info.value)
    grpc.load_model("m", config=json.dumps(BASE))  # the server keeps loading and serving
    assert grpc.is_model_ready("m")


def test_warned_fields_load_with_one_warning_each(running, caplog: pytest.LogCaptureFixture) -> None:
    config = json.dumps({**BASE, "optimization": {"cuda": {"graphs": True}}, "metric_tags": {"team": "a"}})
    with caplog.at_level(logging.WARNING, logger="nereid.server.model_config"):
        httpclient.InferenceServerClient(running.http_url).load_model("m", config=config)
    warnings = [r.getMessage() for r in caplog.records if "is not acted on" in r.getMessage()]
    for field in ("optimization.cuda", "optimization.cuda.graphs", "metric_tags"):
        assert sum(f"field '{field}'" in w for w in warnings) == 1, warnings


def test_a_profile_is_for_tensorrt_only(running) -> None:
    config = json.dumps({**BASE, "instance_group": [{"kind": "KIND_CPU", "profile": ["0"]}]})
    for client in (
        httpclient.InferenceServerClient(running.http_url),
        grpcclient.InferenceServerClient(running.grpc_url),
    ):
        with pytest.raises(InferenceServerException) as info:
            client.load_model("m", config=config)
        assert "instance_group[0].profile is only for TensorRT models" in str(info.value)
