"""The Monitor stage: Prometheus metrics with Triton's names, read from the core at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from nereid.server.stats import LATENCY_BUCKETS
from nereid.server.system_metrics import SystemCollector

if TYPE_CHECKING:
    from nereid.server.core import InferenceCore

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class CounterMetricFamily(Metric):
    """A counter exposed under its exact name, as Triton does (no ``_total`` suffix)."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        super().__init__(name, documentation, "counter")
        self._labels = labels

    def add_metric(self, values: list[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labels, values, strict=True)), value)


class CoreCollector:
    """Turns each loaded version's :class:`~nereid.server.stats.ModelStats` into metric families."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        success = CounterMetricFamily(
            "nv_inference_request_success",
            "Number of successful inference requests, all batch sizes",
            labels=labels,
        )
        failure = CounterMetricFamily(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            labels=[*labels, "reason"],
        )
        count = CounterMetricFamily(
            "nv_inference_count", "Number of inferences performed (batch size n counts n)", labels=labels
        )
        exec_count = CounterMetricFamily(
            "nv_inference_exec_count", "Number of model executions performed", labels=labels
        )
        durations = {
            "request": CounterMetricFamily(
                "nv_inference_request_duration_us",
                "Cumulative end-to-end inference request duration in microseconds",
                labels=labels,
            ),
            "queue": CounterMetricFamily(
                "nv_inference_queue_duration_us",
                "Cumulative inference queuing duration in microseconds",
                labels=labels,
            ),
            "compute_input": CounterMetricFamily(
                "nv_inference_compute_input_duration_us",
                "Cumulative compute input duration in microseconds",
                labels=labels,
            ),
            "compute_infer": CounterMetricFamily(
                "nv_inference_compute_infer_duration_us",
                "Cumulative compute inference duration in microseconds",
                labels=labels,
            ),
            "compute_output": CounterMetricFamily(
                "nv_inference_compute_output_duration_us",
                "Cumulative inference compute output duration in microseconds",
                labels=labels,
            ),
        }
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution",
            labels=labels,
        )
        pending_priority = GaugeMetricFamily(
            "nereid_pending_request_count_by_priority",
            "Queued requests per priority level (1 = highest), for autoscalers",
            labels=[*labels, "priority"],
        )
        latency = HistogramMetricFamily(
            "nereid_inference_request_duration_seconds",
            "End-to-end duration of successful inference requests (for latency percentiles)",
            labels=labels,
        )
        for model in self.core.loaded_models():
            stats, key = model.stats, [model.name, model.version_str]
            success.add_metric(key, stats.success.count)
            for reason, value in stats.failures.items():
                failure.add_metric([*key, reason], value)
            count.add_metric(key, stats.inference_count)
            exec_count.add_metric(key, stats.execution_count)
            durations["request"].add_metric(key, (stats.success.ns + stats.fail.ns) // 1000)
            durations["queue"].add_metric(key, stats.queue.ns // 1000)
            durations["compute_input"].add_metric(key, stats.compute_input.ns // 1000)
            durations["compute_infer"].add_metric(key, stats.compute_infer.ns // 1000)
            durations["compute_output"].add_metric(key, stats.compute_output.ns // 1000)
            pending.add_metric(key, stats.pending)
            for level, value in sorted(stats.pending_by_priority.items()):
                pending_priority.add_metric([*key, str(level)], value)
            latency.add_metric(key, _cumulative(stats.latency_buckets), stats.success.ns / 1e9)
        yield from (
            success,
            failure,
            count,
            exec_count,
            *durations.values(),
            pending,
            pending_priority,
            latency,
        )
        yield from self.lifecycle()
        yield from self.response_cache()

    def response_cache(self) -> Iterator[Metric]:
        """Triton's per-model cache counters (only for models using the cache), and the cache's gauges."""
        labels = ["model", "version"]
        hits = CounterMetricFamily("nv_cache_num_hits_per_model", "Number of cache hits per model", labels)
        misses = CounterMetricFamily(
            "nv_cache_num_misses_per_model", "Number of cache misses per model", labels
        )
        hit_us = CounterMetricFamily(
            "nv_cache_hit_duration_per_model",
            "Cumulative time requests spend retrieving a cached response per model on cache hits (microseconds)",
            labels,
        )
        miss_us = CounterMetricFamily(
            "nv_cache_miss_duration_per_model",
            "Cumulative time requests spend looking up and inserting responses into the cache on a cache "
            "miss (microseconds)",
            labels,
        )
        for model in self.core.loaded_models():
            if model.cached:
                stats, key = model.stats, [model.name, model.version_str]
                hits.add_metric(key, stats.cache_hit.count)
                misses.add_metric(key, stats.cache_miss.count)
                hit_us.add_metric(key, stats.cache_hit.ns // 1000)
                miss_us.add_metric(key, stats.cache_miss.ns // 1000)
        yield from (hits, misses, hit_us, miss_us)
        cache = self.core.response_cache
        if cache is None:
            return
        gauges = {
            "nv_cache_num_entries": ("Number of responses stored in response cache", len(cache)),
            "nv_cache_num_hits": ("Number of cache hits in response cache", cache.hits),
            "nv_cache_num_misses": ("Number of cache misses in response cache", cache.misses),
            "nv_cache_num_evictions": ("Number of cache evictions in response cache", cache.evictions),
            "nv_cache_util": ("Cache utilization [0.0 - 1.0]", cache.used / cache.capacity),
        }
        for name, (text, value) in gauges.items():
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], value)
            yield gauge

    def lifecycle(self) -> Iterator[Metric]:
        """Routing shares, canary state, shadow comparisons, residency and evictions."""
        share = GaugeMetricFamily(
            "nereid_routing_share",
            "Configured percentage of unversioned requests per version",
            labels=["model", "version"],
        )
        canary = GaugeMetricFamily(
            "nereid_canary_share",
            "The canary candidate's current traffic percentage, labelled by its status",
            labels=["model", "candidate", "status"],
        )
        shadow = CounterMetricFamily(
            "nereid_shadow_comparisons",
            "Shadow responses compared with the primary's (agree, disagree, error)",
            labels=["model", "version", "result"],
        )
        resident = GaugeMetricFamily(
            "nereid_model_resident_bytes",
            "Estimated bytes of each loaded model (0 when evicted)",
            labels=["model"],
        )
        evicted = GaugeMetricFamily("nereid_model_evicted", "1 while a model is evicted", labels=["model"])
        repository = self.core.repository
        for name, entry in sorted(repository.models.items()):
            resident.add_metric([name], entry.footprint if entry.versions else 0)
            evicted.add_metric([name], 1 if entry.evicted else 0)
            policy = entry.routing
            if policy is None:
                continue
            for version, value in sorted(policy.shares().items()):
                share.add_metric([name, str(version)], value)
            if policy.canary is not None:
                c = policy.canary
                canary.add_metric([name, str(c.canary.candidate), c.status], c.share)
            if policy.config.shadow is not None:
                counts, target = policy.shadow_stats, str(policy.config.shadow.version)
                for result in ("agree", "disagree", "error"):
                    shadow.add_metric([name, target, result], getattr(counts, result))
        budget = GaugeMetricFamily(
            "nereid_model_memory_budget_bytes", "The memory budget for loaded models (0: none)"
        )
        budget.add_metric([], repository.memory_budget)
        evictions = CounterMetricFamily(
            "nereid_model_evictions", "Models evicted to fit the memory budget", labels=[]
        )
        evictions.add_metric([], repository.evictions)
        yield from (share, canary, shadow, resident, evicted, budget, evictions)


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    buckets, total = [], 0
    for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
        total += count
        buckets.append((bound, float(total)))
    return buckets


class _Collected:
    """Metric families already collected, in the shape ``generate_latest`` reads."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def exposition(*registries: CollectorRegistry) -> bytes:
    """The Prometheus text of ``registries``, with counters described under their samples' own name.

    prometheus-client writes every counter family's ``# HELP`` / ``# TYPE`` under ``<name>_total``.
    Triton's counters (``nv_inference_request_success``, ``nv_cache_*``, ``pb_utils`` counters) are
    sampled without the suffix, and a scraper that finds metadata for another name stores them untyped,
    so families whose samples all carry the bare name get their metadata under that name too.
    """
    metrics = [metric for registry in registries for metric in registry.collect()]
    text = generate_latest(_Collected(metrics))
    for metric in metrics:
        if metric.type == "counter" and all(sample.name == metric.name for sample in metric.samples):
            name = metric.name.encode()
            for kind in (b"HELP", b"TYPE"):
                text = text.replace(b"# %s %s_total " % (kind, name), b"# %s %s " % (kind, name), 1)
    return text


def build_registry(core: InferenceCore) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreCollector(core))
    registry.register(SystemCollector())
    return registry


class MetricsApp:
    """A tiny ASGI app serving ``GET /metrics`` in Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            status, body, ctype = 404, b'{"error":"Not Found"}', b"application/json"
        else:
            # The core's families, then whatever backends registered in prometheus-client's default
            # registry (the LLM engine's histograms and gauges, process metrics).
            status, body, ctype = (
                200,
                exposition(self.registry, REGISTRY),
                CONTENT_TYPE,
            )
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]
