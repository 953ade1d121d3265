"""GPU test helpers: an MLP in ONNX, a TensorRT engine built from it, model folders.

Without CUDA every test here is marked skipped at collection (see
:func:`pytest_collection_modifyitems`), so ``pytest tests/gpu`` reports skips (exit 0) instead
of collecting nothing (pytest's exit 5); test modules import GPU-only packages lazily.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without CUDA, mark every test of this folder skipped (they stay collected)."""
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and a CUDA build of torch")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[2]
TORCH_HELPERS = ROOT / "tests" / "unit" / "backends" / "pytorch" / "torch_models.py"

FEATURES, HIDDEN, CLASSES = 16, 64, 8


def mlp_weights(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32) / 4,
        rng.standard_normal(HIDDEN).astype(np.float32) / 4,
        rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32) / 8,
        rng.standard_normal(CLASSES).astype(np.float32) / 8,
    )


def mlp_reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    w1, b1, w2, b2 = (w.astype(np.float64) for w in mlp_weights(seed))
    return (np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2).astype(np.float32)


def mlp_onnx(seed: int = 0) -> bytes:
    """x [batch, 16] -> relu(x W1 + b1) W2 + b2 [batch, 8], names INPUT0/OUTPUT0."""
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = mlp_weights(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT0", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["o0"]),
            helper.make_node("Add", ["o0", "b2"], ["OUTPUT0"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            numpy_helper.from_array(w, n)
            for w, n in zip((w1, b1, w2, b2), ("w1", "b1", "w2", "b2"), strict=True)
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def build_engine(onnx_bytes: bytes, max_batch: int) -> bytes:
    """A TensorRT plan for ``onnx_bytes`` with dim 0 dynamic in 1..max_batch (TensorRT 8.6-11)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = list(tensor.shape)[1:]
        profile.set_shape(tensor.name, [1, *rest], [max(1, max_batch // 2), *rest], [max_batch, *rest])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    return bytes(plan)


def write_model(root: Path, name: str, filename: str, data: bytes, config: str) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / filename).write_bytes(data)
    (folder / "config.pbtxt").write_text(config)
    return folder


def mlp_config(platform: str, kind: str, max_batch: int = 8, extra: str = "") -> str:
    return f"""
platform: "{platform}"
max_batch_size: {max_batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]
instance_group [ {{ count: 1 kind: {kind} }} ]
{extra}
"""


def torch_helpers() -> ModuleType:
    name = "nereid_tests_torch_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TORCH_HELPERS)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def infer_http(
    url: str, model: str, x: np.ndarray, output: str = "OUTPUT0", input_name: str = "INPUT0"
) -> np.ndarray:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return httpclient.InferenceServerClient(url).infer(model, [tensor]).as_numpy(output)


@pytest.fixture(scope="session")
def gpu() -> ModuleType:
    """These helpers as a module (``tests/`` has no packages, so tests cannot import conftest)."""
    return sys.modules[__name__]


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((8, FEATURES)).astype(np.float32)
