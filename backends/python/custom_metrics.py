"""Custom metrics of Python models (``pb_utils.MetricFamily``), kept in the server process.

Every operation is one tuple handed to :meth:`MetricStore.apply`: in-process models call it
directly, a stub process sends the same tuple over its socket and waits for the answer, so the
values live in one place whichever mode a model runs in. The families are exported on the
metrics port (through prometheus-client's default registry) next to the server's own.

Operations (``kind`` is 0 counter, 1 gauge, 2 histogram, as ``pb_utils.MetricFamily`` numbers them):

    ("family", name, description, kind)
    ("metric", name, labels, buckets)       # buckets: histograms only
    ("increment" | "set" | "observe" | "value", name, labels, value)

A wrong name, kind, label, bucket list or operation raises :class:`MetricError`, which
``pb_utils`` turns into a ``TritonModelException`` in the model.
"""

from __future__ import annotations

import bisect
import itertools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import Metric

COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
KINDS = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
LabelKey = tuple[tuple[str, str], ...]


class MetricError(ValueError):
    """A metric call the model got wrong; the message says what."""


@dataclass
class _Series:
    value: float = 0.0
    buckets: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # per bucket, plus +Inf last
    total: float = 0.0
    observed: int = 0


@dataclass
class _Family:
    name: str
    description: str
    kind: int
    series: dict[LabelKey, _Series] = field(default_factory=dict)


class MetricStore:
    """Every custom metric family of the process; safe to call from any thread."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()
        self._registered = False

    def apply(self, op: tuple[Any, ...]) -> float | None:
        """Run one operation (see the module docstring); raises MetricError when it is wrong."""
        with self._lock:
            match op:
                case ("family", name, description, kind):
                    self._family(name, description, kind)
                    return None
                case ("metric", name, labels, buckets):
                    self._metric(name, labels, buckets)
                    return None
                case (("increment" | "set" | "observe" | "value") as action, name, labels, value):
                    return self._update(action, name, labels, value)
        raise MetricError(f"unknown metric operation {op[0]!r}" if op else "empty metric operation")

    def _family(self, name: Any, description: Any, kind: Any) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise MetricError(f"invalid metric family name {name!r}: use letters, digits, '_' and ':'")
        if not isinstance(description, str):
            raise MetricError(f"metric family '{name}': the description must be a string")
        if isinstance(kind, bool) or kind not in KINDS:
            raise MetricError(
                f"metric family '{name}': kind must be MetricFamily.COUNTER, GAUGE or HISTOGRAM, got {kind!r}"
            )
        found = self._families.get(name)
        if found is not None:
            if found.kind != kind:
                raise MetricError(
                    f"metric family '{name}' already exists as a {KINDS[found.kind]}, not a {KINDS[kind]}"
                )
            return  # the first description stays, as in Triton
        self._families[name] = _Family(name, description, kind)
        if not self._registered:
            REGISTRY.register(_Collector(self))
            self._registered = True

    def _metric(self, name: str, labels: Any, buckets: Any) -> None:
        family = self._get(name)
        key = _label_key(name, labels)
        if family.kind == HISTOGRAM:
            bounds = _buckets(name, buckets)
            family.series.setdefault(key, _Series(buckets=bounds, counts=[0] * (len(bounds) + 1)))
        else:
            if buckets is not None:
                raise MetricError(f"metric family '{name}': only histograms take buckets")
            family.series.setdefault(key, _Series())

    def _update(self, action: str, name: str, labels: Any, value: Any) -> float | None:
        family = self._get(name)
        series = family.series.get(_label_key(name, labels))
        if series is None:
            raise MetricError(f"metric family '{name}' has no metric with labels {labels!r}")
        kind = KINDS[family.kind]
        if action == "value":
            if family.kind == HISTOGRAM:
                raise MetricError(f"metric family '{name}': a histogram has no single value")
            return series.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MetricError(f"metric family '{name}': {action} takes a number, got {value!r}")
        allowed = {"increment": (COUNTER, GAUGE), "set": (GAUGE,), "observe": (HISTOGRAM,)}[action]
        if family.kind not in allowed:
            raise MetricError(f"metric family '{name}': a {kind} does not support {action}")
        if action == "increment":
            if family.kind == COUNTER and value < 0:
                raise MetricError(f"metric family '{name}': a counter cannot be incremented by {value}")
            series.value += value
        elif action == "set":
            series.value = float(value)
        else:
            series.counts[bisect.bisect_left(series.buckets, value)] += 1
            series.total += value
            series.observed += 1
        return None

    def _get(self, name: str) -> _Family:
        family = self._families.get(name)
        if family is None:
            raise MetricError(f"no metric family '{name}'")
        return family

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = [
                (f.name, f.description, f.kind, list(f.series.items())) for f in self._families.values()
            ]
        for name, description, kind, series in families:
            metric = Metric(name, description, KINDS[kind])
            for key, s in series:
                labels = dict(key)
                if kind != HISTOGRAM:
                    metric.add_sample(name, labels, s.value)
                    continue
                running = 0
                for bound, count in zip([*map(_le, s.buckets), "+Inf"], s.counts, strict=True):
                    running += count
                    metric.add_sample(f"{name}_bucket", {**labels, "le": bound}, running)
                metric.add_sample(f"{name}_count", labels, s.observed)
                metric.add_sample(f"{name}_sum", labels, s.total)
            yield metric


class _Collector:
    def __init__(self, store: MetricStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        # Names change at run time; describing none also keeps register() from calling collect().
        return []

    def collect(self) -> Iterator[Metric]:
        return self.store.collect()


def _label_key(name: str, labels: Any) -> LabelKey:
    if labels is None:
        return ()
    if not isinstance(labels, dict):
        raise MetricError(
            f"metric family '{name}': labels must be a dict of strings, got {type(labels).__name__}"
        )
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL.fullmatch(key) or key.startswith("__") or key == "le":
            raise MetricError(f"metric family '{name}': invalid label name {key!r}")
        if not isinstance(value, str):
            raise MetricError(
                f"metric family '{name}': label '{key}' must have a string value, got {value!r}"
            )
    return tuple(sorted(labels.items()))


def _buckets(name: str, buckets: Any) -> list[float]:
    if buckets is None:
        raise MetricError(f"metric family '{name}': a histogram metric needs buckets")
    if not isinstance(buckets, list | tuple) or any(
        isinstance(b, bool) or not isinstance(b, int | float) for b in buckets
    ):
        raise MetricError(f"metric family '{name}': buckets must be a list of numbers")
    bounds = [float(b) for b in buckets]
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        raise MetricError(f"metric family '{name}': buckets must be strictly ascending, got {list(buckets)}")
    return bounds


def _le(bound: float) -> str:
    return f"{bound:g}"


STORE = MetricStore()


def apply_metric(op: Any) -> tuple[str, Any]:
    """A stub's operation on :data:`STORE`: ``("ok", result)`` or ``("error", message)``."""
    try:
        if not isinstance(op, tuple):
            raise MetricError("a metric operation is a tuple")
        return ("ok", STORE.apply(op))
    except MetricError as exc:
        return ("error", str(exc))
