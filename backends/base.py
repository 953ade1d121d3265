"""The backend contract: Backend -> Model -> ModelInstance (Triton's three levels).

Call order
    1. ``Backend.auto_complete_config(config, version_dir)`` may fill a config's inputs, outputs,
       ``max_batch_size`` and ``dynamic_batching`` from the model file, before validation.
    2. ``Backend.load_model(context)`` returns a :class:`Model` for one version.
    3. ``Model.create_instance(instance_context)`` is called ``count`` times per instance group.
    4. ``ModelInstance.execute(requests)`` runs requests, then ``ModelInstance.finalize()`` and
       ``Model.finalize()`` on unload.

Execution rules
    * ``execute`` is never called concurrently on one instance; different instances of one
      model may run at the same time on different threads. It runs on a worker thread, never
      on the event loop, so it may block (and should release the GIL in native code).
    * Ordinary models return a list with exactly one :class:`InferResponse` per request, in
      request order. A per-request failure is a response whose ``error`` is set; raising fails
      every request of the call with that error, and the instance keeps serving.
    * Decoupled models (``model_transaction_policy { decoupled: true }``) return ``None`` and
      send zero or more responses per request through ``request.sender.send(resp, final)``,
      the last call with ``final=True`` (``resp`` may be ``None`` for an empty final).
    * Inputs arrive already validated against the config: names, datatypes and shapes match,
      and with ``max_batch_size > 0`` dim 0 is the batch dimension. Inputs of several requests
      can be merged with :mod:`nereid.backends.batching` helpers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from nereid.proto import model_config_pb2 as mc
from nereid.server.types import CoreHandle, InferRequest, InferResponse


@dataclass(slots=True)
class ModelContext:
    """What a backend gets to load one version of a model."""

    name: str
    version: int
    config: mc.ModelConfig
    model_dir: Path  # <repo>/<model>
    version_dir: Path  # <repo>/<model>/<version>
    # The core that loaded this version, for models that call other models (BLS, ensembles).
    core: CoreHandle | None = None

    @property
    def model_file(self) -> Path:
        return self.version_dir / self.config.default_model_filename

    def parameter(self, key: str, default: str | None = None) -> str | None:
        if key in self.config.parameters:
            return self.config.parameters[key].string_value
        return default


@dataclass(slots=True)
class InstanceContext:
    """Placement of one instance: its group name, index, kind and device."""

    name: str
    index: int
    kind: str  # "KIND_CPU" | "KIND_GPU" | "KIND_MODEL"
    device_id: int = 0

    @property
    def device(self) -> str:
        return f"cuda:{self.device_id}" if self.kind == "KIND_GPU" else "cpu"


class ExecutionTimer:
    """Splits one ``execute`` call into Triton's compute_input / infer / output phases.

    Backends wrap their phases in ``with timer.phase("input"):``; time they do not mark
    counts as ``infer``. The scheduler calls :meth:`reset` before and :meth:`settle` after
    each call. Phases are plain objects, not generator context managers: they run per request.
    """

    __slots__ = ("_marked", "_phases", "infer_ns", "input_ns", "output_ns")

    def __init__(self) -> None:
        self.input_ns = self.infer_ns = self.output_ns = 0
        self._marked = False
        self._phases = {name: _Phase(self, f"{name}_ns") for name in ("input", "infer", "output")}

    def phase(self, name: str) -> _Phase:
        return self._phases[name]

    def reset(self) -> None:
        self.input_ns = self.infer_ns = self.output_ns = 0
        self._marked = False

    def settle(self, total_ns: int) -> None:
        """Attribute the whole call to ``infer`` when the backend marked no phase."""
        if not self._marked:
            self.infer_ns = total_ns


class _Phase:
    """``with timer.phase(name):`` adds the block's wall time to ``timer.<name>_ns``."""

    __slots__ = ("_attr", "_start", "_timer")

    def __init__(self, timer: ExecutionTimer, attr: str) -> None:
        self._timer = timer
        self._attr = attr
        self._start = 0

    def __enter__(self) -> None:
        self._start = time.perf_counter_ns()

    def __exit__(self, *exc: object) -> None:
        timer = self._timer
        setattr(timer, self._attr, getattr(timer, self._attr) + time.perf_counter_ns() - self._start)
        timer._marked = True


class ModelInstance(ABC):
    """One execution context of a model; see the module docstring for the contract."""

    #: True when ``execute`` already checks each output against the config (name, datatype,
    #: shape) and keeps only the requested ones; the server then skips its own pass over them.
    checks_outputs: bool = False

    def __init__(self, model: Model, context: InstanceContext) -> None:
        self.model = model
        self.context = context
        self.timer = ExecutionTimer()

    @abstractmethod
    def execute(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        """Run ``requests``; one response per request in order, or None for decoupled models."""

    def finalize(self) -> None:  # noqa: B027 - optional hook
        """Release this instance's resources."""


class Model(ABC):
    """One loaded version of a model."""

    def __init__(self, context: ModelContext) -> None:
        self.context = context

    @property
    def config(self) -> mc.ModelConfig:
        return self.context.config

    @abstractmethod
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        """Create one instance; raise to fail the model load with that message."""

    def finalize(self) -> None:  # noqa: B027 - optional hook
        """Release model-wide resources after every instance is finalized."""


class Backend(ABC):
    """A plugin that knows one model format (registered by name in the registry)."""

    #: Triton platform strings this backend also answers to (e.g. ``onnxruntime_onnx``).
    platforms: tuple[str, ...] = ()
    #: The file ``default_model_filename`` falls back to.
    default_model_filename: str = ""
    #: Instance kind used for ``KIND_AUTO`` without GPUs and for unspecified groups.
    default_instance_count: int = 1
    #: Config ``parameters`` this backend reads as file paths: confined to the model's folder
    #: when a load request supplies the config (see :func:`nereid.server.paths.confine`).
    path_parameters: tuple[str, ...] = ()

    def auto_complete_config(self, config: mc.ModelConfig, version_dir: Path) -> None:  # noqa: B027
        """Fill missing inputs/outputs/max_batch_size/dynamic_batching from the model file."""

    @abstractmethod
    def load_model(self, context: ModelContext) -> Model:
        """Load one version; raise to mark it UNAVAILABLE with the message."""
