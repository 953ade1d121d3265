"""The TensorRT backend without TensorRT: its failure messages, auto-complete and binding logic.

The binding logic runs against a stand-in ``tensorrt`` module whose engine computes
``OUTPUT0 = 2 * INPUT0 + 1`` from the raw addresses it is given, on CPU tensors; the real
engine path is covered by ``tests/gpu/test_tensorrt_plan.py`` on a GPU machine. (These tests
live here because the TensorRT backend keeps its device buffers in torch tensors.)
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nereid.backends.base import InstanceContext, Model, ModelContext
from nereid.backends.tensorrt.backend import (
    NEEDS,
    TensorRTBackend,
    TensorRTInstance,
    TensorRTModel,
    complete_config,
)
from nereid.backends.tensorrt.engine import batch_limit, describe
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument, Unavailable
from nereid.server.types import InferRequest, Tensor


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class FakeEngine:
    """One dynamic-batch FP32 input [-1, 4] (profile 1..4 rows) and one output of the same shape."""

    def __init__(
        self,
        io: list[tuple[str, TensorIOMode, DataType, tuple[int, ...]]] | None = None,
        max_rows: int = 4,
        shape_tensor: str = "",
    ) -> None:
        self.io = io or [
            ("INPUT0", TensorIOMode.INPUT, DataType.FLOAT, (-1, 4)),
            ("OUTPUT0", TensorIOMode.OUTPUT, DataType.FLOAT, (-1, 4)),
        ]
        self.max_rows = max_rows
        self.shape_tensor = shape_tensor
        self.num_optimization_profiles = 1

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def _entry(self, name: str):
        return next(e for e in self.io if e[0] == name)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._entry(name)[1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._entry(name)[2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[3]

    def is_shape_inference_io(self, name: str) -> bool:
        return name == self.shape_tensor

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 4), (2, 4), (self.max_rows, 4)]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if len(shape) != 2 or shape[1] != 4 or not 1 <= shape[0] <= self.engine.max_rows:
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes.get("INPUT0", (-1, 4))

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.streams.append(stream)
        shape = self.shapes["INPUT0"]
        count = shape[0] * shape[1]
        x = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["INPUT0"])).reshape(
            shape
        )
        y = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["OUTPUT0"])).reshape(
            shape
        )
        y[...] = 2 * x + 1
        return True


def fake_trt(engine: FakeEngine | None = None) -> SimpleNamespace:
    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
            return (engine or FakeEngine()) if plan == b"fake plan" else None

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    return SimpleNamespace(
        DataType=DataType, TensorIOMode=TensorIOMode, Runtime=Runtime, Logger=Logger, __version__="0.0-fake"
    )


def write_plan(root: Path, config: str, plan: bytes = b"fake plan") -> Path:
    folder = root / "trt"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.plan").write_bytes(plan)
    (folder / "config.pbtxt").write_text(config)
    return folder


CONFIG = """
platform: "tensorrt_plan"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def context_for(folder: Path) -> ModelContext:
    from nereid.server.model_config import parse_config_file

    config = parse_config_file(folder / "config.pbtxt")
    config.name = folder.name
    return ModelContext(folder.name, 1, config, folder, folder / "1")


class Holder(Model):
    def create_instance(self, context: InstanceContext):  # pragma: no cover - not used
        raise NotImplementedError


def instance(folder: Path, engine: FakeEngine | None = None) -> TensorRTInstance:
    engine = engine or FakeEngine()
    model = Holder(context_for(folder))
    return TensorRTInstance(
        model, InstanceContext("g", 0, "KIND_GPU"), engine, torch.device("cpu"), fake_trt(engine)
    )


def request(rows: np.ndarray) -> InferRequest:
    return InferRequest("trt", [Tensor("INPUT0", "FP32", tuple(rows.shape), rows)])


# ---------------------------------------------------------------------------------------------


def test_without_tensorrt_the_load_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    folder = write_plan(tmp_path, CONFIG)
    with pytest.raises(Unavailable) as info:
        TensorRTBackend().load_model(context_for(folder))
    assert info.value.message.startswith(f"model 'trt': {NEEDS}")


def test_without_cuda_the_load_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = write_plan(tmp_path, CONFIG)
    with pytest.raises(Unavailable) as info:
        TensorRTBackend().load_model(context_for(folder))
    assert (
        info.value.message.startswith(f"model 'trt': {NEEDS} (torch ")
        and "sees no CUDA device" in info.value.message
    )


def test_missing_plan_file(tmp_path):
    folder = write_plan(tmp_path, CONFIG)
    (folder / "1" / "model.plan").unlink()
    with pytest.raises(Unavailable, match=r"model 'trt': model file '.*model.plan' does not exist"):
        TensorRTBackend().load_model(context_for(folder))


def test_auto_complete_without_tensorrt_leaves_the_config_alone(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    folder = write_plan(tmp_path, 'platform: "tensorrt_plan"')
    config = mc.ModelConfig(name="trt", default_model_filename="model.plan")
    TensorRTBackend().auto_complete_config(config, folder / "1")
    assert not config.input and not config.output and config.max_batch_size == 0


def test_complete_config_from_engine_io():
    tensors = describe("trt", FakeEngine(max_rows=16), fake_trt())
    assert batch_limit(tensors) == 16
    config = mc.ModelConfig(name="trt")
    complete_config(config, tensors)
    assert config.max_batch_size == 16 and config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("INPUT0", mc.TYPE_FP32, [4])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("OUTPUT0", mc.TYPE_FP32, [4])]


def test_complete_config_keeps_static_engines_unbatched():
    engine = FakeEngine(
        io=[
            ("in", TensorIOMode.INPUT, DataType.INT32, (3, 2)),
            ("out", TensorIOMode.OUTPUT, DataType.HALF, (3,)),
        ]
    )
    config = mc.ModelConfig(name="trt")
    complete_config(config, describe("trt", engine, fake_trt()))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in (*config.input, *config.output)] == [
        ("in", mc.TYPE_INT32, [3, 2]),
        ("out", mc.TYPE_FP16, [3]),
    ]


def test_unservable_engine_tensors():
    fp8 = FakeEngine(
        io=[
            ("in", TensorIOMode.INPUT, DataType.FP8, (4,)),
            ("out", TensorIOMode.OUTPUT, DataType.FLOAT, (4,)),
        ]
    )
    with pytest.raises(InvalidArgument, match=r"engine tensor 'in' has TensorRT type DataType\.FP8"):
        describe("trt", fp8, fake_trt())
    with pytest.raises(InvalidArgument, match="engine input 'INPUT0' is a shape tensor"):
        describe("trt", FakeEngine(shape_tensor="INPUT0"), fake_trt())


def test_batched_requests_are_bound_run_and_split(tmp_path):
    trt_instance = instance(write_plan(tmp_path, CONFIG))
    parts = [np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 10 * n for n in (1, 3)]
    responses = trt_instance.execute([request(p) for p in parts])
    for part, response in zip(parts, responses, strict=True):
        assert response.error is None
        (tensor,) = response.outputs
        assert (tensor.name, tensor.datatype, tensor.shape) == ("OUTPUT0", "FP32", part.shape)
        np.testing.assert_array_equal(tensor.data, 2 * part + 1)
    assert trt_instance.execution.streams == [0]  # one engine run for both requests


def test_shape_outside_the_profile_fails_that_call(tmp_path):
    trt_instance = instance(write_plan(tmp_path, CONFIG))
    (response,) = trt_instance.execute(
        [request(np.zeros((3, 4), np.float32)), request(np.zeros((2, 4), np.float32))]
    )[:1]
    assert isinstance(response.error, InvalidArgument)
    assert (
        "input 'INPUT0' shape [5, 4] does not fit the engine's shape [-1, 4] (profile 0 allows at most [4, 4])"
        in (response.error.message)
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            CONFIG.replace('"INPUT0"', '"IMAGE"'),
            r"config input 'IMAGE' is not an input of the engine \(engine inputs: \['INPUT0'\]\)",
        ),
        (CONFIG.replace('"OUTPUT0"', '"INPUT0"'), r"config output 'INPUT0' is not an output of the engine"),
        (
            CONFIG.replace("TYPE_FP32 dims: [ 4 ] } ]\noutput", "TYPE_FP16 dims: [ 4 ] } ]\noutput"),
            "config input 'INPUT0' is FP16 but the engine tensor is FP32",
        ),
    ],
)
def test_config_must_match_the_engine(tmp_path, config, expected):
    with pytest.raises(InvalidArgument, match=expected):
        instance(write_plan(tmp_path, config))


def test_engine_inputs_missing_from_the_config(tmp_path):
    engine = FakeEngine(
        io=[
            ("INPUT0", TensorIOMode.INPUT, DataType.FLOAT, (-1, 4)),
            ("MASK", TensorIOMode.INPUT, DataType.BOOL, (-1, 4)),
            ("OUTPUT0", TensorIOMode.OUTPUT, DataType.FLOAT, (-1, 4)),
        ]
    )
    with pytest.raises(InvalidArgument, match=r"engine inputs \['MASK'\] are missing from the config"):
        instance(write_plan(tmp_path, CONFIG), engine)


def model_over(folder: Path, gpus: int = 1) -> TensorRTModel:
    """A TensorRTModel over the stand-in tensorrt and a torch whose CUDA part is faked."""
    fake_torch = SimpleNamespace(
        cuda=SimpleNamespace(device=lambda index: contextlib.nullcontext(), device_count=lambda: gpus),
        device=torch.device,
    )
    return TensorRTModel(context_for(folder), folder / "1" / "model.plan", fake_trt(), fake_torch)


def test_kind_cpu_instances_are_refused(tmp_path):
    with pytest.raises(
        InvalidArgument, match="instance group 'g' is KIND_CPU, but TensorRT engines run on GPUs only"
    ):
        model_over(write_plan(tmp_path, CONFIG)).create_instance(InstanceContext("g", 0, "KIND_CPU"))


def test_gpu_beyond_the_machine_is_refused(tmp_path):
    with pytest.raises(Unavailable, match="asks for GPU 3; torch sees 1"):
        model_over(write_plan(tmp_path, CONFIG)).create_instance(InstanceContext("g", 0, "KIND_GPU", 3))


def test_undeserializable_plan_says_why(tmp_path):
    model = model_over(write_plan(tmp_path, CONFIG, plan=b"junk"))
    with pytest.raises(
        InvalidArgument, match=r"TensorRT 0\.0-fake cannot deserialize '.*model.plan': it is not"
    ):
        model.engine(0)


def test_engine_is_deserialized_once_per_gpu(tmp_path):
    model = model_over(write_plan(tmp_path, CONFIG), gpus=2)
    assert model.engine(0) is model.engine(0)
    assert model.engine(1) is not model.engine(0)
    model.finalize()
