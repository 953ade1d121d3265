"""A loaded, servable version of a model: backend model, instances, scheduler, statistics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from nereid.backends import registry
from nereid.backends.base import InstanceContext, Model, ModelContext, ModelInstance
from nereid.ensembles import EnsembleScheduler, load_ensemble
from nereid.proto import model_config_pb2 as mc
from nereid.server.batch_inputs import BatchInputs
from nereid.server.classification import PARAMETER as CLASSIFICATION
from nereid.server.classification import load_labels
from nereid.server.dynamic_batcher import DynamicBatcher
from nereid.server.errors import InvalidArgument, Unavailable
from nereid.server.model_config import ConfigError, TensorSpec, input_specs, output_specs
from nereid.server.reshape import Reshaper
from nereid.server.resource_limiter import ResourceLimiter, Ticket, hand_back
from nereid.server.response_cache import cache_wanted
from nereid.server.sequence_batcher import SequenceBatcher
from nereid.server.sequence_config import SequenceSettings
from nereid.server.stats import ModelStats
from nereid.server.types import CoreHandle, InferRequest, Scheduler
from nereid.server.validation import validate_request
from nereid.server.warmup import warm_up

_LOADS = itertools.count(1)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ModelVersion:
    """Everything the request path needs about one version, resolved once at load."""

    name: str
    version: int
    config: mc.ModelConfig
    model: Model
    instances: list[ModelInstance]
    scheduler: Scheduler
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    stats: ModelStats = field(default_factory=ModelStats)
    #: Whether requests use the server's response cache (the model enables it and can use it).
    cached: bool = False
    #: Unique per load: a reloaded version's cache entries are not the old files' (response cache key).
    load_id: int = field(default_factory=lambda: next(_LOADS))
    #: Rate-limiter tickets of the instances, handed back at unload.
    tickets: list[Ticket] = field(default_factory=list)

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def decoupled(self) -> bool:
        return self.config.model_transaction_policy.decoupled

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    def unready_reason(self) -> str:
        """Why this loaded version cannot serve now ("" when it can): an ensemble's step is down."""
        # Ensemble hook: an ensemble is ready only while every step model is.
        if isinstance(self.scheduler, EnsembleScheduler):
            return self.scheduler.unready_reason()
        return ""

    def validate(self, request: InferRequest) -> None:
        validate_request(request, self.name, self.inputs, self.outputs, self.config.max_batch_size)
        if self.decoupled or isinstance(self.scheduler, EnsembleScheduler):
            # Their responses bypass the instance runner, where classification happens.
            for output in request.outputs:
                if CLASSIFICATION in output.parameters:
                    kind = "decoupled" if self.decoupled else "ensemble"
                    raise InvalidArgument(
                        f"output '{output.name}': classification is not supported on {kind} model '{self.name}'"
                    )

    async def unload(self) -> None:
        await self.scheduler.stop()
        hand_back(self.tickets)
        await asyncio.to_thread(self._finalize)

    def _finalize(self) -> None:
        for instance in self.instances:
            instance.finalize()
        self.model.finalize()


def has_gpu() -> bool:
    """Whether an NVIDIA device is present (cheap: no CUDA library is loaded to find out)."""
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def instance_contexts(config: mc.ModelConfig) -> list[InstanceContext]:
    """One context per instance: ``count`` per group, per listed GPU for GPU groups."""
    contexts: list[InstanceContext] = []
    for group in config.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        if kind == "KIND_GPU" and not has_gpu():
            raise Unavailable(
                f"instance group '{group.name}' asks for KIND_GPU but this machine has no GPU; "
                "use KIND_CPU or KIND_AUTO"
            )
        devices = list(group.gpus) if kind == "KIND_GPU" and group.gpus else [0]
        for device in devices:
            for _ in range(group.count):
                contexts.append(InstanceContext(group.name, len(contexts), kind, device))
    return contexts


def load_version(
    name: str,
    version: int,
    config: mc.ModelConfig,
    model_dir: Path,
    core: CoreHandle | None,
    limiter: ResourceLimiter | None = None,
) -> ModelVersion:
    """Load one version synchronously (called on a loader thread); raises on failure."""
    if config.platform == "ensemble":  # Ensemble hook: steps run through the core, no backend.
        return _load_ensemble_version(name, version, config, model_dir, core)
    origin = str(model_dir)
    sequence = None
    if config.WhichOneof("scheduling_choice") == "sequence_batching":
        sequence = SequenceSettings.from_config(config, model_dir, origin)
    contexts = instance_contexts(config)
    labels = load_labels(config, model_dir, origin)
    backend_name = registry.resolve_name(config.backend, config.platform)
    passive = _check_groups(config, contexts, backend_name, origin)
    # Bad reshapes, batch inputs and ragged inputs fail here, before anything is loaded.
    Reshaper(config, origin)
    BatchInputs(config, backend_name, origin)
    tickets = limiter.register(config, contexts, origin) if limiter is not None else {}
    if limiter is None and any(group.HasField("rate_limiter") for group in config.instance_group):
        log.warning("%s: 'instance_group.rate_limiter' is not acted on while --rate-limit is off", origin)
    context = ModelContext(name, version, config, model_dir, model_dir / str(version), core)
    try:
        model = registry.get(backend_name).load_model(context)
        instances = _create_instances(model, contexts)
    except BaseException:
        hand_back(list(tickets.values()))
        raise
    inputs = {spec.name: spec for spec in input_specs(config, origin)}
    outputs = {spec.name: spec for spec in output_specs(config, origin)}
    try:
        # Before the scheduler exists, so before READY: a failing sample fails the load.
        warm_up(name, version, config, model_dir, instances, inputs, outputs)
    except BaseException:
        _finalize(model, instances)
        hand_back(list(tickets.values()))
        raise
    stats = ModelStats()
    # Passive instances are loaded and initialized but get no requests from the scheduler (Triton).
    serving = [instance for instance in instances if instance.context.name not in passive]
    scheduler: Scheduler
    if sequence is not None:
        scheduler = SequenceBatcher(name, str(version), config, outputs, serving, stats, sequence)
    else:
        scheduler = DynamicBatcher(name, str(version), config, outputs, serving, stats)
    scheduler.runner.tickets = tickets
    scheduler.runner.labels = labels
    # CoreHandle does not promise a cache: cores without one (tests, embedders) serve uncached.
    cached = cache_wanted(config, name, getattr(core, "response_cache", None) is not None)
    return ModelVersion(
        name,
        version,
        config,
        model,
        instances,
        scheduler,
        inputs,
        outputs,
        stats,
        cached,
        tickets=list(tickets.values()),
    )


def _check_groups(
    config: mc.ModelConfig, contexts: list[InstanceContext], backend: str, origin: str
) -> set[str]:
    """The passive groups' names; ConfigError when no instance would serve, or for a ``profile``
    other than TensorRT's profile 0 (the one Nereid runs engines with)."""
    for index, group in enumerate(config.instance_group):
        where = f"{origin}: instance_group[{index}].profile"
        if group.profile and backend != "tensorrt":
            raise ConfigError(f"{where} is only for TensorRT models")
        if group.profile and list(group.profile) != ["0"]:
            raise ConfigError(
                f"{where} {list(group.profile)}: Nereid runs engines with optimization profile '0' only"
            )
    passive = {group.name for group in config.instance_group if group.passive}
    if contexts and all(context.name in passive for context in contexts):
        raise ConfigError(f"{origin}: every instance_group is 'passive': no instance would take requests")
    return passive


def _create_instances(model: Model, contexts: list[InstanceContext]) -> list[ModelInstance]:
    """Every instance, or none: a failure finalizes those made so far and the model."""
    instances: list[ModelInstance] = []
    try:
        for context in contexts:
            instances.append(model.create_instance(context))
    except BaseException:
        _finalize(model, instances)
        raise
    return instances


def _finalize(model: Model, instances: list[ModelInstance]) -> None:
    for instance in instances:
        instance.finalize()
    model.finalize()


def _load_ensemble_version(
    name: str, version: int, config: mc.ModelConfig, model_dir: Path, core: CoreHandle | None
) -> ModelVersion:
    """Ensemble hook: an :class:`EnsembleScheduler` in the Queue stage, no instances."""
    context = ModelContext(name, version, config, model_dir, model_dir / str(version), core)
    model, scheduler = load_ensemble(name, version, config, context, core)
    cache_wanted(config, name, True)  # never cached at the top level; warns when enabled
    inputs = {spec.name: spec for spec in input_specs(config, str(model_dir))}
    outputs = {spec.name: spec for spec in output_specs(config, str(model_dir))}
    return ModelVersion(name, version, config, model, [], scheduler, inputs, outputs, scheduler.stats)
