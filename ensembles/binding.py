"""The load-time checks that need the step models: they exist, and producers fit consumers.

Runs after every step model has loaded (see :mod:`nereid.ensembles.dependencies`). Reads each
step model's config as the core would serve a request that names the step's version (-1: the
version a request naming none gets), and checks every tensor's producer against each consumer:
datatype, and shapes that agree wherever both sides fix a dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nereid.ensembles.plan import EnsemblePlan, Step
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import ServingError
from nereid.server.model_config import ConfigError, TensorSpec, input_specs, output_specs

ConfigLookup = Callable[[str, str], mc.ModelConfig]  # (model, version "" = default) -> config; raises


@dataclass(frozen=True, slots=True)
class _Side:
    """One end of an edge: a datatype and a full shape (batch dimension included as -1)."""

    datatype: str
    shape: tuple[int, ...]
    what: str  # "step 1 ('x') output 'Y'" or "ensemble input 'Z'"


def bind_steps(plan: EnsemblePlan, config: mc.ModelConfig, lookup: ConfigLookup, origin: str) -> None:
    """Check every step against its model; marks decoupled steps (and the ensemble, if any is)."""
    mbs = config.max_batch_size
    produced: dict[str, _Side] = {
        spec.name: _Side(spec.datatype, tuple(spec.full_shape(mbs)), f"ensemble input '{spec.name}'")
        for spec in input_specs(config, origin)
    }
    consumed: list[tuple[str, _Side]] = []
    for step in plan.steps:
        step_config = _step_config(step, lookup, origin)
        step.decoupled = step_config.model_transaction_policy.decoupled
        step_mbs = step_config.max_batch_size
        if mbs > 0 and (step_mbs == 0 or step_mbs < mbs):
            raise ConfigError(
                f"{origin}: {step.label} has max_batch_size {step_mbs}, below the ensemble's {mbs}"
            )
        inputs = {s.name: s for s in input_specs(step_config, step.model_name)}
        outputs = {s.name: s for s in output_specs(step_config, step.model_name)}
        for name, tensor in step.input_map.items():
            spec = _spec(inputs, name, "input", step, origin)
            consumed.append((tensor, _side(spec, step_mbs, f"{step.label} input '{name}'")))
        missing = sorted(n for n, s in inputs.items() if not s.optional and n not in step.input_map)
        if missing:
            raise ConfigError(f"{origin}: {step.label} leaves required input(s) {missing} unmapped")
        for name, tensor in step.output_map.items():
            spec = _spec(outputs, name, "output", step, origin)
            produced.setdefault(tensor, _side(spec, step_mbs, f"{step.label} output '{name}'"))
    for spec in output_specs(config, origin):
        consumed.append(
            (spec.name, _Side(spec.datatype, tuple(spec.full_shape(mbs)), f"ensemble output '{spec.name}'"))
        )
    for tensor, consumer in consumed:
        _check_edge(tensor, produced[tensor], consumer, origin)
    for step in plan.steps:
        if step.when is not None and not step.when.is_route and produced[step.when.tensor].datatype != "BOOL":
            side = produced[step.when.tensor]
            raise ConfigError(
                f"{origin}: {step.label} runs when '{step.when.tensor}' is true, but {side.what} is "
                f"{side.datatype}, not BOOL (use 'equals' to route on other values)"
            )
    _check_decoupled(plan, origin)
    if any(step.decoupled for step in plan.steps):
        config.model_transaction_policy.decoupled = True


def _step_config(step: Step, lookup: ConfigLookup, origin: str) -> mc.ModelConfig:
    try:
        return lookup(step.model_name, step.model_version)
    except ServingError as exc:
        version = f" version {step.model_version}" if step.model_version else ""
        raise ConfigError(
            f"{origin}: {step.label}: unknown or unavailable step model '{step.model_name}'{version} "
            f"({exc.message})"
        ) from None


def _spec(specs: dict[str, TensorSpec], name: str, kind: str, step: Step, origin: str) -> TensorSpec:
    spec = specs.get(name)
    if spec is None:
        raise ConfigError(
            f"{origin}: {step.label} maps {kind} '{name}', but model '{step.model_name}' has no {kind} of "
            f"that name (it has {sorted(specs)})"
        )
    return spec


def _side(spec: TensorSpec, max_batch_size: int, what: str) -> _Side:
    return _Side(spec.datatype, tuple(spec.full_shape(max_batch_size)), what)


def _check_edge(tensor: str, producer: _Side, consumer: _Side, origin: str) -> None:
    if producer.datatype != consumer.datatype:
        raise ConfigError(
            f"{origin}: tensor '{tensor}': {producer.what} is {producer.datatype} but {consumer.what} "
            f"expects {consumer.datatype}"
        )
    a, b = producer.shape, consumer.shape
    if len(a) != len(b) or any(x != -1 and y != -1 and x != y for x, y in zip(a, b, strict=True)):
        raise ConfigError(
            f"{origin}: tensor '{tensor}': {producer.what} has shape {list(a)} but {consumer.what} "
            f"expects {list(b)}"
        )


def _check_decoupled(plan: EnsemblePlan, origin: str) -> None:
    """Steps after a decoupled step run once per response, so they may read only what exists then.

    That is: the ensemble inputs, what the decoupled step and its own upstream produced, and what
    steps downstream of it produce in the same response's run.
    """
    for step in plan.steps:
        if not step.decoupled:
            continue
        down = plan.downstream(step.index)
        allowed = plan.upstream(step.index) | down | {step.index}
        for index in sorted(down):
            for tensor in sorted(plan.steps[index].reads):
                if tensor in plan.inputs:
                    continue
                if not set(plan.producers.get(tensor, ())) <= allowed:
                    raise ConfigError(
                        f"{origin}: {plan.steps[index].label} runs once per response of decoupled "
                        f"{step.label}, but reads '{tensor}', which a step outside that chain produces"
                    )
