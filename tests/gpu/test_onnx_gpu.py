"""ONNX Runtime on the GPU (CUDA provider, and the TensorRT accelerator) against the CPU path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

TRT_ACCELERATOR = (
    'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }'
)


def needs(provider: str) -> Any:
    """onnxruntime, or a skip when it lacks ``provider``."""
    ort = pytest.importorskip("onnxruntime")
    if provider not in ort.get_available_providers():
        pytest.skip(
            f"onnxruntime has no {provider} (available: {ort.get_available_providers()}); "
            f"install onnxruntime-gpu"
        )
    return ort


def test_cuda_provider_matches_cpu(gpu, repo, start_server, batch):
    needs("CUDAExecutionProvider")
    data = gpu.mlp_onnx()
    gpu.write_model(repo.root, "mlp_cpu", "model.onnx", data, gpu.mlp_config("onnxruntime_onnx", "KIND_CPU"))
    gpu.write_model(repo.root, "mlp_gpu", "model.onnx", data, gpu.mlp_config("onnxruntime_onnx", "KIND_GPU"))
    running = start_server(repo.root)
    on_cpu = gpu.infer_http(running.http_url, "mlp_cpu", batch)
    on_gpu = gpu.infer_http(running.http_url, "mlp_gpu", batch)
    np.testing.assert_allclose(on_cpu, gpu.mlp_reference(batch), rtol=1e-4, atol=1e-4)
    # cuBLAS may use TF32 or other summation orders: close, not equal.
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=2e-3, atol=2e-3)


def test_tensorrt_accelerator_matches_cpu(gpu, repo, start_server, batch):
    ort = needs("TensorrtExecutionProvider")
    data = gpu.mlp_onnx()
    probe = ort.InferenceSession(data, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    if probe.get_providers()[0] != "TensorrtExecutionProvider":
        pytest.skip(
            f"the TensorRT provider did not initialise (got {probe.get_providers()}); are the TensorRT "
            f"libraries on the library path?"
        )
    gpu.write_model(repo.root, "mlp_cpu", "model.onnx", data, gpu.mlp_config("onnxruntime_onnx", "KIND_CPU"))
    config = gpu.mlp_config("onnxruntime_onnx", "KIND_GPU", extra=TRT_ACCELERATOR)
    gpu.write_model(repo.root, "mlp_trt", "model.onnx", data, config)
    running = start_server(repo.root)
    on_cpu = gpu.infer_http(running.http_url, "mlp_cpu", batch)
    on_trt = gpu.infer_http(running.http_url, "mlp_trt", batch)
    np.testing.assert_allclose(on_trt, on_cpu, rtol=2e-3, atol=2e-3)
