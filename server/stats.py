"""Per-model-version statistics: Triton's inference/execution counters and durations.

Updated from worker threads under one small lock; read by the statistics APIs and by the
Prometheus collector at scrape time, so the request path never touches prometheus-client.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def copy(self) -> Duration:
        return Duration(self.count, self.ns)


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ExecutionRecord:
    """What one ``execute`` call cost; per-request queue and total times are separate."""

    batch_size: int  # rows (inferences) in the call
    request_count: int
    input_ns: int
    infer_ns: int
    output_ns: int


#: Upper bounds (seconds) of the request-latency histogram the dashboards take percentiles from.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BUCKET_NS = tuple(int(b * 1e9) for b in LATENCY_BUCKETS)


class ModelStats:
    """Counters for one model version (Triton's ModelStatistics)."""

    FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        # Response cache: lookups that hit, and lookups plus insertions of misses (Triton's).
        self.cache_hit = Duration()
        self.cache_miss = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch_stats: dict[int, BatchStats] = {}
        self.failures: dict[str, int] = dict.fromkeys(self.FAILURE_REASONS, 0)
        self.pending = 0
        self.pending_by_priority: dict[int, int] = {}
        # Successful requests per LATENCY_BUCKETS bucket (the last one is +Inf), not cumulative.
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def record_execution(self, record: ExecutionRecord) -> None:
        with self._lock:
            self.execution_count += 1
            self.inference_count += record.batch_size
            n = record.request_count
            self.compute_input.add(record.input_ns, n)
            self.compute_infer.add(record.infer_ns, n)
            self.compute_output.add(record.output_ns, n)
            batch = self.batch_stats.get(record.batch_size)
            if batch is None:
                batch = self.batch_stats[record.batch_size] = BatchStats()
            batch.compute_input.add(record.input_ns)
            batch.compute_infer.add(record.infer_ns)
            batch.compute_output.add(record.output_ns)

    def record_request(self, ok: bool, total_ns: int, queue_ns: int | None, reason: str = "BACKEND") -> None:
        """One finished request: end-to-end time, and its queue time if it reached an instance."""
        with self._lock:
            if ok:
                self.success.add(total_ns)
                self.latency_buckets[bisect_left(_BUCKET_NS, total_ns)] += 1
            else:
                self.fail.add(total_ns)
                self.failures[reason] = self.failures.get(reason, 0) + 1
            if queue_ns is not None:
                self.queue.add(queue_ns)
            self.last_inference_ms = time.time_ns() // 1_000_000

    def record_cache(self, hit: bool, ns: int) -> None:
        """One response-cache lookup; a hit is also a successful request (see record_request)."""
        with self._lock:
            (self.cache_hit if hit else self.cache_miss).add(ns)

    def change_pending(self, priority: int, delta: int) -> None:
        with self._lock:
            self.pending += delta
            self.pending_by_priority[priority] = self.pending_by_priority.get(priority, 0) + delta

    def snapshot(self, name: str, version: str) -> ModelStatistics:
        """A consistent copy of the counters, as Triton's ``ModelStatistics`` entry."""
        with self._lock:
            return ModelStatistics(
                name=name,
                version=version,
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
                inference_stats=InferenceStatistics(
                    success=self.success.copy(),
                    fail=self.fail.copy(),
                    queue=self.queue.copy(),
                    compute_input=self.compute_input.copy(),
                    compute_infer=self.compute_infer.copy(),
                    compute_output=self.compute_output.copy(),
                    cache_hit=self.cache_hit.copy(),
                    cache_miss=self.cache_miss.copy(),
                ),
                batch_stats=tuple(
                    BatchStatistics(
                        size, b.compute_input.copy(), b.compute_infer.copy(), b.compute_output.copy()
                    )
                    for size, b in sorted(self.batch_stats.items())
                ),
            )


@dataclass(frozen=True, slots=True)
class InferenceStatistics:
    """Cumulative durations by phase; field names are Triton's (``inference_stats``)."""

    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)


@dataclass(frozen=True, slots=True)
class BatchStatistics:
    """Execution phases of the calls that ran ``batch_size`` rows."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True, slots=True)
class StepStatistics:
    """One ensemble step as its ensemble saw it: runs, failures, skips, and time per run."""

    step: int
    name: str
    version: str  # "" = the version the core picks
    success: Duration
    fail: Duration
    skipped: int


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """One version's statistics as the statistics extension reports them (field names are Triton's)."""

    name: str
    version: str
    last_inference: int  # ms since the epoch, 0 before the first request
    inference_count: int
    execution_count: int
    inference_stats: InferenceStatistics
    batch_stats: tuple[BatchStatistics, ...] = ()
    memory_usage: tuple[object, ...] = ()
    #: Ensembles only (a Nereid extension; Triton reports composing models separately).
    composing_models: tuple[StepStatistics, ...] | None = None
