"""A TensorRT plan built here from an ONNX MLP, served by the TensorRT backend, against the CPU path."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="needs the tensorrt package (pip install .[gpu])"
)


@pytest.fixture(scope="module")
def plan(gpu) -> bytes:
    return gpu.build_engine(gpu.mlp_onnx(), max_batch=8)


def test_plan_matches_the_cpu_path_and_batches(gpu, repo, start_server, plan, batch):
    gpu.write_model(
        repo.root,
        "mlp_plan",
        "model.plan",
        plan,
        gpu.mlp_config("tensorrt_plan", "KIND_GPU", extra="dynamic_batching {}"),
    )
    gpu.write_model(
        repo.root, "mlp_cpu", "model.onnx", gpu.mlp_onnx(), gpu.mlp_config("onnxruntime_onnx", "KIND_CPU")
    )
    running = start_server(repo.root)
    cpu = gpu.infer_http(running.http_url, "mlp_cpu", batch)
    for rows in (1, 3, 8):
        got = gpu.infer_http(running.http_url, "mlp_plan", batch[:rows])
        assert got.shape == (rows, 8) and got.dtype == np.float32
        np.testing.assert_allclose(got, cpu[:rows], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(cpu, gpu.mlp_reference(batch), rtol=1e-4, atol=1e-4)


def test_auto_complete_reads_the_engine(gpu, repo, start_server, plan):
    folder = gpu.write_model(repo.root, "mlp_auto", "model.plan", plan, 'platform: "tensorrt_plan"\n')
    assert folder.is_dir()
    running = start_server(repo.root)
    config = httpclient.InferenceServerClient(running.http_url).get_model_config("mlp_auto")
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [16])
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [8])
    ]


def test_kind_cpu_and_bad_plans_fail_clearly(gpu, repo, start_server, plan):
    gpu.write_model(repo.root, "on_cpu", "model.plan", plan, gpu.mlp_config("tensorrt_plan", "KIND_CPU"))
    gpu.write_model(
        repo.root, "junk", "model.plan", b"not a plan", gpu.mlp_config("tensorrt_plan", "KIND_GPU")
    )
    running = start_server(repo.root, exit_on_error=False)
    reasons = {
        r["name"]: r.get("reason", "")
        for r in httpclient.InferenceServerClient(running.http_url).get_model_repository_index()
    }
    assert "TensorRT engines run on GPUs only" in reasons["on_cpu"]
    assert "cannot deserialize" in reasons["junk"]
    with pytest.raises(InferenceServerException):
        gpu.infer_http(running.http_url, "junk", np.zeros((1, 16), np.float32))
