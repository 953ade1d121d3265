"""PyTorch backend (``platform: "pytorch_libtorch"`` or ``"torch_aoti"``, ``backend: "pytorch"``).

Runs TorchScript (``model.pt``), torch.export programs and AOTInductor packages
(``model.pt2``; see :mod:`.loader`) with Triton's libtorch conventions:

* inputs and outputs map to ``forward``'s arguments and results by the naming conventions in
  :mod:`.naming` (``INPUT__0``/``OUTPUT__0``, argument names, or config order);
* PyTorch files carry no I/O metadata, so the config must list every input and output: there
  is no auto-complete (Triton has none either), and a config without them fails to load;
* each instance loads its own copy on its device: ``KIND_CPU`` -> ``cpu``, ``KIND_GPU`` ->
  ``cuda:<gpu>`` (the load fails when torch sees no such GPU), ``KIND_MODEL`` -> wherever the
  file put the weights;
* with ``max_batch_size > 0`` the requests of one call are concatenated on dim 0, run in one
  ``forward`` and split back;
* BYTES (``TYPE_STRING``) tensors are refused at load: torch has no string tensors.

Config ``parameters`` (string values, keys as in Triton's PyTorch backend):

``INFERENCE_MODE`` (default ``true``)
    run under ``torch.inference_mode()``; ``false`` uses ``torch.no_grad()``.
``DISABLE_OPTIMIZED_EXECUTION`` (default ``false``)
    TorchScript only: skip the profiling graph executor's optimisations (slow first calls).
``ENABLE_CACHE_CLEANING`` (default ``false``)
    ``torch.cuda.empty_cache()`` after each GPU call.
``INTRA_OP_THREAD_COUNT`` / ``INTER_OP_THREAD_COUNT``
    torch's CPU thread pools. These are process-wide: the first model that sets one wins
    and later different values are logged and ignored (see :mod:`.threads`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.backends.batching import BatchLoop, Fetched
from nereid.backends.pytorch.loader import (
    DEFAULT_FILENAME,
    PT2_FILENAME,
    TORCHSCRIPT,
    Program,
    detect_format,
    load_program,
    resolve_path,
)
from nereid.backends.pytorch.naming import pick_outputs, plan_inputs, plan_outputs
from nereid.backends.pytorch.tensors import to_numpy, to_torch
from nereid.backends.pytorch.threads import INTER_OP, INTRA_OP, PROCESS_THREADS
from nereid.proto import model_config_pb2 as mc
from nereid.server.datatypes import config_to_api
from nereid.server.errors import InvalidArgument, Unavailable
from nereid.server.model_config import ConfigError
from nereid.server.sequence_config import sequence_inputs, state_outputs
from nereid.server.types import InferRequest, InferResponse


def check_config(config: mc.ModelConfig, origin: str) -> None:
    """The config rules PyTorch adds: explicit inputs and outputs, no BYTES tensors."""
    missing = [kind for kind, tensors in (("input", config.input), ("output", config.output)) if not tensors]
    if missing:
        raise ConfigError(
            f"{origin}: model '{config.name}' lists no {' and no '.join(repr(k) for k in missing)}. "
            f"PyTorch model files carry no input/output metadata, so the PyTorch backend cannot "
            f"auto-complete a config (Triton's cannot either): list every input and output with name, "
            f"data_type and dims; name inputs INPUT__0, INPUT__1, ... (or after forward's arguments) "
            f"and outputs OUTPUT__0, OUTPUT__1, ..."
        )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if tensor.data_type == mc.TYPE_STRING:
                raise ConfigError(
                    f"{origin}: model '{config.name}' {kind} '{tensor.name}' is TYPE_STRING (BYTES), which the "
                    f"PyTorch backend does not support: torch has no string tensors"
                )


@dataclass(frozen=True, slots=True)
class TorchSettings:
    """Config ``parameters`` the backend reads, parsed once at load."""

    inference_mode: bool = True
    optimized_execution: bool = True
    cache_cleaning: bool = False
    threads: dict[str, int] | None = None

    @classmethod
    def from_context(cls, context: ModelContext) -> TorchSettings:
        def flag(key: str, default: bool) -> bool:
            raw = context.parameter(key)
            if raw is None or raw.strip() == "":
                return default
            value = raw.strip().lower()
            if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise InvalidArgument(
                    f"model '{context.name}': parameter {key} must be true or false, got '{raw}'"
                )
            return value in ("true", "1", "yes", "on")

        threads: dict[str, int] = {}
        for key in (INTRA_OP, INTER_OP):
            raw = context.parameter(key)
            if raw is None or raw.strip() == "":
                continue
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value < 1:
                raise InvalidArgument(
                    f"model '{context.name}': parameter {key} must be a positive integer, got '{raw}'"
                )
            threads[key] = value
        return cls(
            inference_mode=flag("INFERENCE_MODE", True),
            optimized_execution=not flag("DISABLE_OPTIMIZED_EXECUTION", False),
            cache_cleaning=flag("ENABLE_CACHE_CLEANING", False),
            threads=threads,
        )


def instance_device(model: str, context: InstanceContext) -> torch.device:
    """The torch device of one instance; KIND_GPU without that GPU fails the load."""
    if context.kind != "KIND_GPU":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise Unavailable(
            f"model '{model}': instance group '{context.name}' is KIND_GPU but torch {torch.__version__} sees no "
            f"CUDA device; use KIND_CPU, or run on a GPU machine with a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if context.device_id >= count:
        raise Unavailable(
            f"model '{model}': instance group '{context.name}' asks for GPU {context.device_id} but torch sees "
            f"{count} CUDA device(s)"
        )
    return torch.device("cuda", context.device_id)


class PyTorchBackend(Backend):
    platforms = ("pytorch_libtorch", "torch_aoti")
    default_model_filename = "model.pt"

    def auto_complete_config(self, config: mc.ModelConfig, version_dir: Path) -> None:
        """Nothing to complete from a PyTorch file; fail early, with the reason, when I/O is missing.

        Only the file name is settled: ``model.pt`` becomes ``model.pt2`` where only that exists
        (Triton's default for ``torch_aoti``), so ``/config`` shows the file that is served.
        """
        check_config(config, str(version_dir.parent))
        only_pt2 = not (version_dir / DEFAULT_FILENAME).exists() and (version_dir / PT2_FILENAME).exists()
        if config.default_model_filename in ("", DEFAULT_FILENAME) and only_pt2:
            config.default_model_filename = PT2_FILENAME

    def load_model(self, context: ModelContext) -> Model:
        check_config(context.config, str(context.model_dir))
        path = resolve_path(context.name, context.version_dir, context.config.default_model_filename)
        fmt = detect_format(context.name, path)
        settings = TorchSettings.from_context(context)
        if settings.threads:
            PROCESS_THREADS.apply(context.name, settings.threads)
        return TorchModel(context, path, fmt, settings)


class TorchModel(Model):
    def __init__(self, context: ModelContext, path: Path, fmt: str, settings: TorchSettings) -> None:
        super().__init__(context)
        self.path = path
        self.format = fmt
        self.settings = settings

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        device = instance_device(self.context.name, context)
        program = load_program(self.context.name, self.path, self.format, context.kind, device)
        return TorchInstance(self, context, program)


class TorchInstance(ModelInstance):
    def __init__(self, model: TorchModel, context: InstanceContext, program: Program) -> None:
        super().__init__(model, context)
        config = model.config
        self.model_name = model.context.name
        self.program = program
        self.settings = model.settings
        # A sequence model also takes the control and implicit-state inputs the sequence batcher
        # adds (after the config's own, in sequence_batching order) and always returns its state
        # outputs (after the config's own).
        extra_inputs = sequence_inputs(config)
        self.states = {spec.name for spec in state_outputs(config)}
        names = [t.name for t in config.input] + [spec.name for spec in extra_inputs]
        self.input_plan = plan_inputs(self.model_name, names, program.arguments)
        declared = [t.name for t in config.output]
        states = [spec.name for spec in state_outputs(config) if spec.name not in declared]
        self.output_plan = plan_outputs(self.model_name, declared + states)
        self.input_types = {t.name: config_to_api(mc.DataType.Name(t.data_type)) for t in config.input}
        self.input_types.update((spec.name, spec.datatype) for spec in extra_inputs)
        self.loop: BatchLoop[list[Any], Any] = BatchLoop(
            model=self.model_name,
            framework="PyTorch",
            batched=config.max_batch_size > 0,
            timer=self.timer,
            bind=self._bind,
            run=self._run,
            fetch=self._fetch,
        )

    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        return self.loop.execute(requests)

    def _bind(self, call: list[InferRequest], feed: dict[str, np.ndarray]) -> list[Any]:
        device = self.program.input_device
        tensors = {name: to_torch(array, self.input_types[name], device) for name, array in feed.items()}
        return self.input_plan.arguments(tensors)

    def _run(self, args: list[Any]) -> Any:
        with self._modes():
            result = self.program.fn(*args)
        device = self.program.input_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result

    def _fetch(self, result: Any, call: list[InferRequest]) -> Fetched:
        wanted = _wanted_outputs(call, self.output_plan) | self.states
        picked = pick_outputs(self.model_name, result, self.output_plan, wanted)
        arrays = {
            name: to_numpy(tensor, f"model '{self.model_name}' output '{name}'")
            for name, tensor in picked.items()
        }
        if self.program.input_device.type == "cuda" and self.settings.cache_cleaning:
            torch.cuda.empty_cache()
        return {name: arrays[name] for name in self.output_plan if name in arrays}

    @contextlib.contextmanager
    def _modes(self) -> Iterator[None]:
        grad = torch.inference_mode() if self.settings.inference_mode else torch.no_grad()
        jit = (
            torch.jit.optimized_execution(False)
            if self.program.format == TORCHSCRIPT and not self.settings.optimized_execution
            else contextlib.nullcontext()
        )
        with grad, jit:
            yield

    def finalize(self) -> None:
        on_gpu = self.program.input_device.type == "cuda"
        del self.program
        if on_gpu:
            torch.cuda.empty_cache()


def _wanted_outputs(call: list[InferRequest], plan: dict[str, int]) -> set[str]:
    """Outputs some request of the call asked for (a request that names none wants all)."""
    wanted: set[str] = set()
    for request in call:
        if not request.outputs:
            return set(plan)
        wanted.update(o.name for o in request.outputs if o.name in plan)
    return wanted
