"""TensorRT backend (``platform: "tensorrt_plan"`` or ``backend: "tensorrt"``): ``model.plan`` engines.

* ``tensorrt`` and torch are imported when a model loads, never at import time: without them,
  or without a CUDA device, the load fails with "TensorRT backend needs CUDA and the tensorrt
  package: pip install .[gpu]".
* The plan is deserialized once per GPU (``trt.Runtime``); each instance gets its own
  ``IExecutionContext`` and its own torch CUDA stream. Instances must be ``KIND_GPU`` (or
  ``KIND_MODEL``, which means GPU 0): engines do not run on CPUs.
* Device buffers are torch CUDA tensors: inputs are copied in on the instance's stream, their
  shapes set with ``set_input_shape`` (optimisation profile 0; a shape outside it fails that
  request), outputs allocated from ``get_tensor_shape``, every address bound with
  ``set_tensor_address``, and the engine run with ``execute_async_v3`` on the same stream.
* With ``max_batch_size > 0`` the requests of one call are concatenated on dim 0 and split back.
* Auto-complete (Triton does it too): a config without inputs/outputs gets them from the
  engine's I/O tensors, and ``max_batch_size`` from profile 0 when dim 0 of every I/O tensor is
  dynamic (then ``dynamic_batching`` is switched on, as Triton does). It needs tensorrt and a
  GPU; without them it leaves the config alone and the load reports why.

Data-dependent output shapes (which need an ``IOutputAllocator``) and shape-tensor inputs are
not supported and fail the load or the request with a message saying so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.backends.batching import BatchLoop, Fetched
from nereid.backends.tensorrt.engine import EngineTensor, batch_limit, describe
from nereid.proto import model_config_pb2 as mc
from nereid.server.datatypes import api_to_config, config_to_api
from nereid.server.errors import InternalError, InvalidArgument, Unavailable
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

NEEDS = "TensorRT backend needs CUDA and the tensorrt package: pip install .[gpu]"
DEFAULT_FILENAME = "model.plan"


def import_runtime(model: str) -> tuple[ModuleType, ModuleType]:
    """(tensorrt, torch) with a usable CUDA device, or Unavailable with :data:`NEEDS`."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise Unavailable(f"model '{model}': {NEEDS} ({exc})") from None
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(f"model '{model}': {NEEDS} (torch provides the device buffers: {exc})") from None
    if not torch.cuda.is_available():
        raise Unavailable(f"model '{model}': {NEEDS} (torch {torch.__version__} sees no CUDA device)")
    return trt, torch


def _logger(trt: ModuleType) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def _plan_path(version_dir: Path, filename: str) -> Path:
    return version_dir / (filename or DEFAULT_FILENAME)


class TensorRTBackend(Backend):
    platforms = ("tensorrt_plan",)
    default_model_filename = DEFAULT_FILENAME

    def auto_complete_config(self, config: mc.ModelConfig, version_dir: Path) -> None:
        if config.input and config.output:
            return
        path = _plan_path(version_dir, config.default_model_filename)
        if not path.is_file():
            return
        try:
            trt, torch = import_runtime(config.name)
            with torch.cuda.device(0):
                engine = trt.Runtime(_logger(trt)).deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                return
            tensors = describe(config.name, engine, trt)
        except Exception as exc:  # the load reports the same problem with its full message
            log.info("model '%s': no TensorRT auto-complete: %s", config.name, exc)
            return
        complete_config(config, tensors)

    def load_model(self, context: ModelContext) -> Model:
        path = _plan_path(context.version_dir, context.config.default_model_filename)
        if not path.is_file():
            raise Unavailable(f"model '{context.name}': model file '{path}' does not exist")
        trt, torch = import_runtime(context.name)
        return TensorRTModel(context, path, trt, torch)


def complete_config(config: mc.ModelConfig, tensors: list[EngineTensor]) -> None:
    """Fill missing inputs/outputs (and max_batch_size) from the engine's I/O tensors."""
    if config.max_batch_size == 0 and not config.input and not config.output:
        limit = batch_limit(tensors)
        if limit > 0:
            config.max_batch_size = limit
            if limit > 1 and config.WhichOneof("scheduling_choice") is None:
                config.dynamic_batching.SetInParent()
    skip = 1 if config.max_batch_size > 0 else 0
    for target, is_input in ((config.input, True), (config.output, False)):
        if len(target):
            continue
        for tensor in tensors:
            if tensor.is_input != is_input:
                continue
            entry = target.add()
            entry.name = tensor.name
            entry.data_type = mc.DataType.Value(api_to_config(tensor.datatype))
            entry.dims.extend(list(tensor.shape[skip:]) or [1])


class TensorRTModel(Model):
    """One plan, deserialized once per GPU that has an instance."""

    def __init__(self, context: ModelContext, path: Path, trt: ModuleType, torch: ModuleType) -> None:
        super().__init__(context)
        self.path = path
        self.trt = trt
        self.torch = torch
        self.plan = path.read_bytes()
        self.runtime = trt.Runtime(_logger(trt))
        self._engines: dict[int, Any] = {}
        self._lock = threading.Lock()

    def engine(self, device_id: int) -> Any:
        with self._lock:
            if device_id not in self._engines:
                reason = ""
                try:
                    with self.torch.cuda.device(device_id):
                        engine = self.runtime.deserialize_cuda_engine(self.plan)
                except Exception as exc:  # some versions raise instead of returning None
                    engine, reason = None, f" ({type(exc).__name__}: {exc})"
                if engine is None:
                    raise InvalidArgument(
                        f"model '{self.context.name}': TensorRT {self.trt.__version__} cannot deserialize "
                        f"'{self.path}'{reason}: it is not a TensorRT plan, or it was built by another TensorRT "
                        f"version or for another GPU (plans are not portable; rebuild it on this machine)"
                    )
                self._engines[device_id] = engine
            return self._engines[device_id]

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        name = self.context.name
        if context.kind == "KIND_CPU":
            raise InvalidArgument(
                f"model '{name}': instance group '{context.name}' is KIND_CPU, but TensorRT engines run on "
                f"GPUs only; use KIND_GPU (or leave instance_group out)"
            )
        device_id = context.device_id if context.kind == "KIND_GPU" else 0
        count = self.torch.cuda.device_count()
        if device_id >= count:
            raise Unavailable(
                f"model '{name}': instance group '{context.name}' asks for GPU {device_id}; "
                f"torch sees {count}"
            )
        engine = self.engine(device_id)
        return TensorRTInstance(self, context, engine, self.torch.device("cuda", device_id), self.trt)

    def finalize(self) -> None:
        self._engines.clear()


class TensorRTInstance(ModelInstance):
    """One execution context and stream over an engine.

    ``device`` may be a CPU torch device when ``engine`` is a stand-in (tests drive the
    binding logic that way); real engines always run on a CUDA device.
    """

    def __init__(
        self, model: Model, context: InstanceContext, engine: Any, device: Any, trt: ModuleType
    ) -> None:
        super().__init__(model, context)
        import torch

        from nereid.backends.pytorch import tensors as torch_tensors

        self.torch = torch
        self.convert = torch_tensors
        self.model_name = model.context.name
        self.device = device
        self.tensors = {t.name: t for t in describe(self.model_name, engine, trt)}
        self._check_config(model.config)
        self.input_types = {t.name: config_to_api(mc.DataType.Name(t.data_type)) for t in model.config.input}
        self.output_names = [t.name for t in model.config.output]
        self.engine_outputs = [t for t in self.tensors.values() if not t.is_input]
        with self._on_device():
            self.execution = engine.create_execution_context()
        if self.execution is None:
            raise Unavailable(
                f"model '{self.model_name}': TensorRT could not create an execution context "
                f"(out of GPU memory?)"
            )
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.loop: BatchLoop[dict[str, Any], dict[str, Any]] = BatchLoop(
            model=self.model_name,
            framework="TensorRT",
            batched=model.config.max_batch_size > 0,
            timer=self.timer,
            bind=self._bind,
            run=self._run,
            fetch=self._fetch,
        )

    def _check_config(self, config: mc.ModelConfig) -> None:
        engine_inputs = sorted(t.name for t in self.tensors.values() if t.is_input)
        engine_outputs = sorted(t.name for t in self.tensors.values() if not t.is_input)
        for kind, entries, known in (
            ("input", config.input, engine_inputs),
            ("output", config.output, engine_outputs),
        ):
            for entry in entries:
                tensor = self.tensors.get(entry.name)
                if tensor is None or tensor.name not in known:
                    raise InvalidArgument(
                        f"model '{self.model_name}': config {kind} '{entry.name}' is not an {kind} of the engine "
                        f"(engine {kind}s: {known})"
                    )
                declared = config_to_api(mc.DataType.Name(entry.data_type))
                if declared != tensor.datatype:
                    raise InvalidArgument(
                        f"model '{self.model_name}': config {kind} '{entry.name}' is {declared} but the engine "
                        f"tensor is {tensor.datatype}"
                    )
        missing = sorted(set(engine_inputs) - {t.name for t in config.input})
        if missing:
            raise InvalidArgument(
                f"model '{self.model_name}': engine inputs {missing} are missing from the config"
            )

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return self.torch.cuda.device(self.device)
        return contextlib.nullcontext()

    def _on_stream(self) -> contextlib.AbstractContextManager[Any]:
        if self.stream is not None:
            return self.torch.cuda.stream(self.stream)
        return contextlib.nullcontext()

    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        with self._on_device(), self._on_stream():
            return self.loop.execute(requests)

    def _bind(self, call: list[InferRequest], feed: dict[str, np.ndarray]) -> dict[str, Any]:
        """Device buffers for every engine I/O tensor, bound to the execution context.

        The returned buffers must stay alive until the engine is done with them.
        """
        torch, execution = self.torch, self.execution
        bound: dict[str, Any] = {}
        for name, array in feed.items():
            tensor = self.convert.to_torch(array, self.input_types[name], self.device).contiguous()
            if not execution.set_input_shape(name, tuple(tensor.shape)):
                raise InvalidArgument(self._shape_error(name, tuple(tensor.shape)))
            execution.set_tensor_address(name, tensor.data_ptr())
            bound[name] = tensor
        for spec in self.engine_outputs:
            shape = tuple(int(d) for d in execution.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise InternalError(
                    f"model '{self.model_name}': output '{spec.name}' has a data-dependent shape {list(shape)}, "
                    f"which the TensorRT backend does not support"
                )
            buffer = torch.empty(shape, dtype=getattr(torch, spec.torch_dtype), device=self.device)
            execution.set_tensor_address(spec.name, buffer.data_ptr())
            bound[spec.name] = buffer
        return bound

    def _run(self, bound: dict[str, Any]) -> dict[str, Any]:
        handle = self.stream.cuda_stream if self.stream is not None else 0
        if not self.execution.execute_async_v3(handle):
            raise InternalError(
                f"model '{self.model_name}': TensorRT execute_async_v3 failed (see the server log)"
            )
        if self.stream is not None:
            self.stream.synchronize()
        return bound

    def _fetch(self, bound: dict[str, Any], call: list[InferRequest]) -> Fetched:
        return {
            name: (
                self.tensors[name].datatype,
                self.convert.to_numpy(bound[name], f"model '{self.model_name}' output '{name}'")[1],
            )
            for name in self.output_names
        }

    def _shape_error(self, name: str, shape: tuple[int, ...]) -> str:
        spec = self.tensors[name]
        limit = f" (profile 0 allows at most {list(spec.profile_max)})" if spec.profile_max else ""
        return (
            f"model '{self.model_name}': input '{name}' shape {list(shape)} does not fit the engine's "
            f"shape {list(spec.shape)}{limit}"
        )

    def finalize(self) -> None:
        self.execution = None
        self.stream = None
