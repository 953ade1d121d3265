"""The LLM metrics again under vLLM's names and labels, so vLLM's Grafana dashboard works unchanged.

Read at scrape time from the ``nereid_llm_*`` families (no second observation on the engine thread):
each sample is renamed and relabelled ``model`` -> ``model_name``, ``version`` -> ``engine`` (vLLM's
engine index label; here it carries the model version, so versions stay apart).
``vllm:gpu_cache_usage_perc`` is the KV cache in use on whatever device holds it (on CPU too), as
``vllm:kv_cache_usage_perc``; the V0 name is kept because the published dashboard reads it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from nereid.backends.llm import metrics as m

# nereid family -> vLLM names (one source may feed a current and a deprecated vLLM name).
RENAMES: tuple[tuple[object, tuple[str, ...]], ...] = (
    (m.RUNNING, ("vllm:num_requests_running",)),
    (m.WAITING, ("vllm:num_requests_waiting",)),
    (m.KV_USAGE, ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
    (m.TIME_TO_FIRST_TOKEN, ("vllm:time_to_first_token_seconds",)),
    (m.INTER_TOKEN_LATENCY, ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")),
    (m.E2E_LATENCY, ("vllm:e2e_request_latency_seconds",)),
    (m.PROMPT_TOKENS, ("vllm:prompt_tokens",)),
    (m.GENERATION_TOKENS, ("vllm:generation_tokens",)),
    (m.PREEMPTIONS, ("vllm:num_preemptions",)),
    (m.PREFIX_QUERIES, ("vllm:prefix_cache_queries",)),
    (m.PREFIX_HITS, ("vllm:prefix_cache_hits",)),
    (m.SPEC_DRAFTS, ("vllm:spec_decode_num_drafts",)),
    (m.SPEC_DRAFT_TOKENS, ("vllm:spec_decode_num_draft_tokens",)),
    (m.SPEC_ACCEPTED_TOKENS, ("vllm:spec_decode_num_accepted_tokens",)),
)
LABELS = {"model": "model_name", "version": "engine"}


def _relabel(labels: dict[str, str]) -> dict[str, str]:
    return {LABELS.get(k, k): v for k, v in labels.items()}


class VllmNames:
    """A prometheus-client collector re-exporting the engine families under vLLM's names."""

    def collect(self) -> Iterator[Metric]:
        swapped = GaugeMetricFamily(
            "vllm:num_requests_swapped",
            "Requests swapped to CPU (always 0: Nereid recomputes preempted sequences)",
            labels=["model_name", "engine"],
        )
        for family, names in RENAMES:
            for metric in family.collect():  # type: ignore[attr-defined]
                for name in names:
                    out = Metric(name, metric.documentation, metric.type)
                    for sample in metric.samples:
                        if sample.name.endswith("_created"):
                            continue  # vLLM's exposition has no _created samples
                        suffix = sample.name[len(metric.name) :]
                        out.samples.append(
                            Sample(name + suffix, _relabel(sample.labels), sample.value, sample.timestamp)
                        )
                    yield out
                if family is m.RUNNING:
                    for sample in metric.samples:
                        swapped.add_metric(list(_relabel(sample.labels).values()), 0)
        yield swapped


_lock = threading.Lock()


def register() -> None:
    """Add the collector to prometheus-client's default registry once per process (engines load in parallel)."""
    from prometheus_client import REGISTRY

    with _lock:
        if "vllm:num_requests_swapped" not in REGISTRY._names_to_collectors:  # no public lookup
            REGISTRY.register(VllmNames())
