"""An ensemble's statistics: its own request counters plus what each step cost inside it.

The step models count each step request in their own statistics (the step goes through their
queue); here the ensemble keeps, per step, how often it ran, failed or was skipped and the time
from submitting the step to its last response, like Triton's per-composing-model figures
(perf_analyzer's "Composing models" section). They appear as ``composing_models`` in the
ensemble's ``model_stats`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nereid.ensembles.plan import EnsemblePlan
from nereid.server.stats import Duration, ModelStatistics, ModelStats, StepStatistics


@dataclass(slots=True)
class StepStats:
    model: str
    version: str  # "" = the version the core picks
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    skipped: int = 0


class EnsembleStats(ModelStats):
    """:class:`ModelStats` with one :class:`StepStats` per ensemble step."""

    def __init__(self, plan: EnsemblePlan) -> None:
        super().__init__()
        self.steps = [StepStats(step.model_name, step.model_version) for step in plan.steps]

    def record_step(self, index: int, ok: bool, ns: int) -> None:
        with self._lock:
            step = self.steps[index]
            (step.success if ok else step.fail).add(ns)

    def record_skipped(self, index: int) -> None:
        with self._lock:
            self.steps[index].skipped += 1

    def snapshot(self, name: str, version: str) -> ModelStatistics:
        base = super().snapshot(name, version)
        with self._lock:
            steps = tuple(
                StepStatistics(
                    index, step.model, step.version, step.success.copy(), step.fail.copy(), step.skipped
                )
                for index, step in enumerate(self.steps)
            )
        return replace(base, composing_models=steps)
