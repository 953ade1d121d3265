"""An ensemble's validated DAG, built from its own config at load time.

``ensemble_scheduling { step [...] }`` is read exactly as Triton reads it: ``input_map`` maps
a step model's input to an ensemble tensor, ``output_map`` a step model's output to one, and
a step runs once every tensor it reads exists. Nereid's one extension is the step's ``when``
(``EnsembleStepCondition`` in ``proto/model_config.proto``): a BOOL guard or one branch of a
route on a tensor's value.

This module checks what the ensemble's config alone decides (cycles, tensors consumed but
never produced, outputs nobody produces, inputs nobody consumes, conditions); the checks that
need the step models' configs are in :mod:`nereid.ensembles.binding`. Every message names the
step and the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError


@dataclass(frozen=True, slots=True)
class Condition:
    """When a step runs: ``tensor`` true (BOOL guard), or its value in ``equals`` (a route branch).

    ``otherwise`` runs when the value matches none of ``others`` (the values its sibling branches
    on the same tensor list).
    """

    tensor: str
    equals: frozenset[str] = frozenset()
    otherwise: bool = False
    others: frozenset[str] = frozenset()

    @property
    def is_route(self) -> bool:
        return bool(self.equals) or self.otherwise

    def branch(self) -> str:
        """A label for this branch, distinct between branches of one route."""
        return "<otherwise>" if self.otherwise else "|".join(sorted(self.equals))


@dataclass(slots=True)
class Step:
    """One ensemble step; ``model_version`` "" means the version the core would pick (-1)."""

    index: int
    model_name: str
    model_version: str
    input_map: dict[str, str]  # step model input -> ensemble tensor
    output_map: dict[str, str]  # step model output -> ensemble tensor
    when: Condition | None = None
    decoupled: bool = False  # set by binding, from the step model's config

    @property
    def label(self) -> str:
        return f"step {self.index} ('{self.model_name}')"

    @property
    def reads(self) -> frozenset[str]:
        """Ensemble tensors this step waits for: its inputs and its condition's tensor."""
        names = set(self.input_map.values())
        if self.when is not None:
            names.add(self.when.tensor)
        return frozenset(names)


@dataclass(eq=False)
class EnsemblePlan:
    """The DAG: steps, who produces and who consumes each ensemble tensor."""

    name: str
    steps: list[Step]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    producers: dict[str, list[int]] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Per plan, cached by the set of requested outputs (a handful of distinct sets in practice).
        self.needed_steps = lru_cache(maxsize=64)(self._needed_steps)

    def _needed_steps(self, requested: frozenset[str]) -> frozenset[int]:
        """Steps that can contribute to ``requested`` outputs; the others are skipped."""
        wanted, needed = set(requested), set()
        todo = list(requested)
        while todo:
            tensor = todo.pop()
            for index in self.producers.get(tensor, ()):
                if index in needed:
                    continue
                needed.add(index)
                for read in self.steps[index].reads:
                    if read not in wanted:
                        wanted.add(read)
                        todo.append(read)
        return frozenset(needed)

    def downstream(self, index: int) -> frozenset[int]:
        """Steps that read, directly or not, what step ``index`` produces."""
        found: set[int] = set()
        todo = [index]
        while todo:
            step = self.steps[todo.pop()]
            for tensor in step.output_map.values():
                for consumer in self.consumers.get(tensor, ()):
                    if consumer not in found:
                        found.add(consumer)
                        todo.append(consumer)
        return frozenset(found)

    def upstream(self, index: int) -> frozenset[int]:
        """Steps whose outputs step ``index`` reads, directly or not."""
        found: set[int] = set()
        todo = [index]
        while todo:
            for tensor in self.steps[todo.pop()].reads:
                for producer in self.producers.get(tensor, ()):
                    if producer not in found:
                        found.add(producer)
                        todo.append(producer)
        return frozenset(found)


def build_plan(config: mc.ModelConfig, origin: str) -> EnsemblePlan:
    """Read and check ``config.ensemble_scheduling``; raises ConfigError naming step and tensor."""
    if config.WhichOneof("scheduling_choice") != "ensemble_scheduling" or not config.ensemble_scheduling.step:
        raise ConfigError(f"{origin}: platform 'ensemble' needs 'ensemble_scheduling' with at least one step")
    if config.instance_group:
        raise ConfigError(f"{origin}: an ensemble cannot have an 'instance_group'")
    inputs = tuple(t.name for t in config.input)
    outputs = tuple(t.name for t in config.output)
    steps = [_read_step(index, step, origin) for index, step in enumerate(config.ensemble_scheduling.step)]
    plan = EnsemblePlan(config.name, steps, inputs, outputs)
    for step in steps:
        for tensor in step.output_map.values():
            if tensor in inputs:
                raise ConfigError(f"{origin}: {step.label} writes '{tensor}', which is an ensemble input")
            plan.producers.setdefault(tensor, []).append(step.index)
        for tensor in step.reads:
            plan.consumers.setdefault(tensor, []).append(step.index)
    _check_routes(plan, origin)
    _check_wiring(plan, origin)
    _check_acyclic(plan, origin)
    _check_single_producers(plan, origin)
    return plan


def _read_step(index: int, step: mc.ModelEnsembling.Step, origin: str) -> Step:
    where = f"{origin}: ensemble_scheduling.step[{index}]"
    if not step.model_name:
        raise ConfigError(f"{where}: 'model_name' is required")
    if step.model_version < -1:
        raise ConfigError(f"{where} ('{step.model_name}'): 'model_version' must be -1 or a version")
    if not step.input_map:
        raise ConfigError(f"{where} ('{step.model_name}'): 'input_map' is empty")
    if not step.output_map:
        raise ConfigError(f"{where} ('{step.model_name}'): 'output_map' is empty")
    seen: dict[str, str] = {}
    for output, tensor in step.output_map.items():
        if tensor in seen:
            raise ConfigError(
                f"{where} ('{step.model_name}'): outputs '{seen[tensor]}' and '{output}' both write '{tensor}'"
            )
        seen[tensor] = output
    when = None
    if step.HasField("when"):
        cond = step.when
        if not cond.tensor:
            raise ConfigError(f"{where} ('{step.model_name}'): 'when.tensor' is required")
        if cond.equals and cond.otherwise:
            raise ConfigError(
                f"{where} ('{step.model_name}'): 'when' takes 'equals' or 'otherwise', not both"
            )
        when = Condition(cond.tensor, frozenset(cond.equals), cond.otherwise)
    version = "" if step.model_version == -1 else str(step.model_version)
    return Step(index, step.model_name, version, dict(step.input_map), dict(step.output_map), when)


def _check_routes(plan: EnsemblePlan, origin: str) -> None:
    """Branches of one route list distinct values; an ``otherwise`` learns its siblings' values."""
    routes: dict[str, list[Step]] = {}
    for step in plan.steps:
        if step.when is not None and step.when.is_route:
            routes.setdefault(step.when.tensor, []).append(step)
    for tensor, branches in routes.items():
        listed = [s for s in branches if not s.when.otherwise]  # type: ignore[union-attr]
        values: frozenset[str] = frozenset()
        for step in listed:
            assert step.when is not None
            overlap = values & step.when.equals
            if overlap:
                raise ConfigError(
                    f"{origin}: {step.label} routes on '{tensor}' value(s) {sorted(overlap)}, which an "
                    "earlier step already routes on"
                )
            values |= step.when.equals
        if not listed:
            raise ConfigError(
                f"{origin}: {branches[0].label} routes 'otherwise' on '{tensor}', but no step routes on "
                f"a value of '{tensor}'"
            )
        for step in branches:
            assert step.when is not None
            if step.when.otherwise:
                step.when = Condition(tensor, otherwise=True, others=values)


def _check_wiring(plan: EnsemblePlan, origin: str) -> None:
    for step in plan.steps:
        for tensor in sorted(step.reads):
            if tensor not in plan.producers and tensor not in plan.inputs:
                raise ConfigError(
                    f"{origin}: {step.label} reads '{tensor}', which no step produces and is not an "
                    "ensemble input"
                )
    for tensor in plan.outputs:
        if tensor not in plan.producers:
            raise ConfigError(f"{origin}: ensemble output '{tensor}' is produced by no step")
    for tensor in plan.inputs:
        if tensor not in plan.consumers:
            raise ConfigError(f"{origin}: ensemble input '{tensor}' is consumed by no step")
    # A tensor written but never read is allowed (Triton allows it); the step is simply pruned.


def _check_acyclic(plan: EnsemblePlan, origin: str) -> None:
    """Depth-first search; a back edge is reported with the tensors along the cycle."""
    state: dict[int, int] = {}  # 1: on the stack, 2: done
    path: list[tuple[int, str]] = []

    def visit(index: int) -> None:
        state[index] = 1
        for tensor in sorted(plan.steps[index].output_map.values()):
            for consumer in plan.consumers.get(tensor, ()):
                path.append((index, tensor))
                if state.get(consumer) == 1:
                    start = next(i for i, (s, _) in enumerate(path) if s == consumer)
                    cycle = " -> ".join(f"{plan.steps[s].label} via '{t}'" for s, t in path[start:])
                    raise ConfigError(
                        f"{origin}: the steps form a cycle: {cycle} -> {plan.steps[consumer].label}"
                    )
                if consumer not in state:
                    visit(consumer)
                path.pop()
        state[index] = 2

    for step in plan.steps:
        if step.index not in state:
            visit(step.index)


def branch_guards(plan: EnsemblePlan) -> list[frozenset[tuple[str, str]]]:
    """Per step, the route branches it runs under: its own, and those every producer it reads shares."""
    guards: list[frozenset[tuple[str, str]] | None] = [None] * len(plan.steps)

    def guard(index: int) -> frozenset[tuple[str, str]]:
        known = guards[index]
        if known is not None:
            return known
        step = plan.steps[index]
        found: set[tuple[str, str]] = set()
        if step.when is not None and step.when.is_route:
            found.add((step.when.tensor, step.when.branch()))
        for tensor in step.reads:
            producers = plan.producers.get(tensor, [])
            if producers:
                found |= frozenset.intersection(*(guard(p) for p in producers))
        guards[index] = frozenset(found)
        return guards[index]  # type: ignore[return-value]

    return [guard(step.index) for step in plan.steps]


def _exclusive(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> bool:
    """Two steps never both run: they sit on different branches of one route."""
    return any(ta == tb and va != vb for ta, va in a for tb, vb in b)


def _check_single_producers(plan: EnsemblePlan, origin: str) -> None:
    """A tensor has one producer, or several on mutually exclusive route branches."""
    guards = branch_guards(plan)
    for tensor, producers in plan.producers.items():
        for i, first in enumerate(producers):
            for second in producers[i + 1 :]:
                if not _exclusive(guards[first], guards[second]):
                    raise ConfigError(
                        f"{origin}: {plan.steps[first].label} and {plan.steps[second].label} both write "
                        f"'{tensor}'; only branches of one route (exclusive 'when' values) may"
                    )
