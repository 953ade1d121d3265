"""ONNX Runtime backend (``platform: "onnxruntime_onnx"`` or ``backend: "onnxruntime"``).

Config ``parameters`` (string values, as in Triton's onnxruntime backend):
``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode`` (0 sequential,
1 parallel) and ``graph_optimization_level`` (-1 basic, 0 extended, 1 all; also settable as
``optimization { graph { level } }``). GPU instances use the CUDA provider; the TensorRT
provider is added by ``optimization { execution_accelerators { gpu_execution_accelerator
[{ name: "tensorrt" }] } }``.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.backends.batching import BatchLoop, Fetched
from nereid.proto import model_config_pb2 as mc
from nereid.server.batch_inputs import BatchInputs
from nereid.server.datatypes import api_to_config
from nereid.server.errors import InvalidArgument, Unavailable
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16
DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size

# ONNX element type (as onnxruntime names it) -> API datatype.
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}
_LEVELS = {
    "-1": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "0": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "1": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _probe_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


class OnnxRuntimeBackend(Backend):
    platforms = ("onnxruntime_onnx",)
    default_model_filename = "model.onnx"

    def auto_complete_config(self, config: mc.ModelConfig, version_dir: Path) -> None:
        """Triton's ONNX auto-complete: inputs, outputs and a batch dimension from the graph."""
        if config.input and config.output:
            return
        path = _model_path(version_dir, config.default_model_filename)
        if not path.exists():
            return
        session = _probe_session(path)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        tensors = inputs + outputs
        if config.max_batch_size == 0 and not config.input and not config.output:
            batchable = all(t.shape and not (isinstance(t.shape[0], int) and t.shape[0] > 0) for t in tensors)
            if batchable:
                config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
                if config.WhichOneof("scheduling_choice") is None:
                    config.dynamic_batching.SetInParent()
        skip = 1 if config.max_batch_size > 0 else 0
        for target, found in ((config.input, inputs), (config.output, outputs)):
            if len(target):
                continue
            for tensor in found:
                entry = target.add()
                entry.name = tensor.name
                entry.data_type = mc.DataType.Value(api_to_config(_ORT_TYPES.get(tensor.type, "FP32")))
                entry.dims.extend(_dims(tensor.shape[skip:]) or [1])

    def load_model(self, context: ModelContext) -> Model:
        path = _model_path(context.version_dir, context.config.default_model_filename)
        if not path.exists():
            raise Unavailable(f"model file '{path}' does not exist")
        return OnnxModel(context, path)


def _model_path(version_dir: Path, filename: str) -> Path:
    path = version_dir / (filename or "model.onnx")
    return path / "model.onnx" if path.is_dir() else path


class OnnxModel(Model):
    def __init__(self, context: ModelContext, path: Path) -> None:
        super().__init__(context)
        self.path = path
        for accelerator in self.config.optimization.execution_accelerators.gpu_execution_accelerator:
            if accelerator.name != "tensorrt":  # the one Nereid adds (see server/config_support.py)
                log.warning(
                    "model '%s': gpu_execution_accelerator '%s' is not acted on (only 'tensorrt' is)",
                    context.name,
                    accelerator.name,
                )

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        param = self.context.parameter
        options.intra_op_num_threads = int(param("intra_op_thread_count", "0") or 0)
        options.inter_op_num_threads = int(param("inter_op_thread_count", "0") or 0)
        if param("execution_mode", "0") == "1":
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        level = param("graph_optimization_level")
        if level is None and self.config.optimization.HasField("graph"):
            level = str(self.config.optimization.graph.level)
        options.graph_optimization_level = _LEVELS.get(
            level or "1", ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        return options

    def providers(self, context: InstanceContext) -> list[Any]:
        if context.kind != "KIND_GPU":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise Unavailable(
                f"instance '{context.name}' is KIND_GPU but onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu"
            )
        providers: list[Any] = []
        for accelerator in self.config.optimization.execution_accelerators.gpu_execution_accelerator:
            if accelerator.name == "tensorrt":
                options = {"device_id": context.device_id, **dict(accelerator.parameters)}
                providers.append(("TensorrtExecutionProvider", options))
        providers.append(("CUDAExecutionProvider", {"device_id": context.device_id}))
        return providers

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        session = ort.InferenceSession(
            str(self.path), self.session_options(), providers=self.providers(context)
        )
        return OnnxInstance(self, context, session)


class OnnxInstance(ModelInstance):
    def __init__(self, model: OnnxModel, context: InstanceContext, session: ort.InferenceSession) -> None:
        super().__init__(model, context)
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        # numpy has no bfloat16: a model with BF16 tensors runs on OrtValues (the bits as uint16).
        self.bf16_inputs = {i.name for i in session.get_inputs() if i.type == "tensor(bfloat16)"}
        self.uses_bf16 = bool(self.bf16_inputs) or any(
            o.type == "tensor(bfloat16)" for o in session.get_outputs()
        )
        config = model.config
        self.datatypes = {o.name: _ORT_TYPES.get(o.type, "FP32") for o in session.get_outputs()}
        for output in config.output:
            self.datatypes[output.name] = _ORT_TYPES.get(
                next((o.type for o in session.get_outputs() if o.name == output.name), ""), "FP32"
            )
        # Ragged inputs are concatenated flat and batch inputs added (``batch_input``).
        extras = BatchInputs(config, "onnxruntime", model.context.name)
        self.loop: BatchLoop[dict[str, np.ndarray], list[np.ndarray]] = BatchLoop(
            model=model.context.name,
            framework="ONNX Runtime",
            batched=config.max_batch_size > 0,
            timer=self.timer,
            prepare=_to_ort_inputs,
            bind=extras.complete if extras else lambda call, feed: feed,
            run=self._run,
            fetch=self._fetch,
            ragged=extras.ragged,
            split=extras.split if extras.scatter else None,
        )

    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        return self.loop.execute(requests)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.uses_bf16:
            return self.session.run(self.output_names, feed)
        values = {
            name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array), ONNX_BFLOAT16)
            if name in self.bf16_inputs
            else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
            for name, array in feed.items()
        }
        outputs = self.session.run_with_ort_values(self.output_names, values)
        return [
            _bf16_bits(value) if value.data_type() == "tensor(bfloat16)" else value.numpy()
            for value in outputs
        ]

    def _fetch(self, arrays: list[np.ndarray], call: list[InferRequest]) -> Fetched:
        return {
            name: (self.datatypes[name], _from_ort(self.datatypes[name], array))
            for name, array in zip(self.output_names, arrays, strict=True)
        }


def _to_ort_inputs(request: InferRequest) -> None:
    """BYTES become ``str`` for onnxruntime (which only takes UTF-8 text)."""
    for tensor in request.inputs:
        if tensor.datatype == "BYTES":
            try:
                tensor.data = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(tensor.data)
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"input '{tensor.name}': onnxruntime only accepts UTF-8 strings in BYTES tensors"
                ) from None


def _from_ort(datatype: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime returns BYTES outputs as ``str``; the API carries bytes."""
    if datatype == "BYTES":
        array = np.array(
            [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in array.reshape(-1)], dtype=object
        ).reshape(array.shape)
    return array


def _bf16_bits(value: ort.OrtValue) -> np.ndarray:
    """A host bfloat16 OrtValue's bits as a uint16 array (onnxruntime cannot give it to numpy)."""
    if value.device_name().lower() != "cpu":
        raise Unavailable("a BF16 output in device memory cannot be read back; run the model on CPU")
    shape = tuple(value.shape())
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, np.uint16)
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.ctypeslib.as_array(buffer).reshape(shape).copy()
