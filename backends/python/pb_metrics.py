"""``pb_utils.MetricFamily`` and its ``Metric``: custom metrics as Triton's Python backend documents them.

    family = pb_utils.MetricFamily(name="my_requests", description="...", kind=pb_utils.MetricFamily.COUNTER)
    metric = family.Metric(labels={"model": "m"})          # histograms also take buckets=[...]
    metric.increment(1); metric.set(2.0); metric.observe(0.3); metric.value()

Each call goes to the runtime bound around the model (a stub forwards it to the server
process) or, in-process, straight to :data:`~nereid.backends.python.custom_metrics.STORE`.
A call the model gets wrong raises ``pb_utils.TritonModelException``.
"""

from __future__ import annotations

from typing import Any

from nereid.backends.python import runtime
from nereid.backends.python.custom_metrics import STORE, MetricError
from nereid.backends.python.pb_errors import TritonModelException


def _call(op: tuple[Any, ...]) -> Any:
    forward = getattr(runtime.current(), "metric", None)
    if forward is not None:
        return forward(op)  # a stub: raises TritonModelException itself
    try:
        return STORE.apply(op)
    except MetricError as exc:
        raise TritonModelException(str(exc)) from None


class MetricFamily:
    """A named metric of one kind; its metrics differ by their labels."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        _call(("family", name, description, kind))
        self._name = name
        self._kind = kind

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        """The metric with ``labels`` (created at 0 the first time); histograms need ``buckets``."""
        return Metric(self, labels or {}, buckets)


class Metric:
    """One labelled series of a family; a second Metric with the same labels is the same series."""

    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None) -> None:
        _call(("metric", family._name, labels, buckets))
        self._family = family._name
        self._labels = dict(labels)

    def increment(self, value: float) -> None:
        _call(("increment", self._family, self._labels, value))

    def set(self, value: float) -> None:
        _call(("set", self._family, self._labels, value))

    def observe(self, value: float) -> None:
        _call(("observe", self._family, self._labels, value))

    def value(self) -> float:
        return float(_call(("value", self._family, self._labels, None)))
