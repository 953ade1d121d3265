"""Prometheus metrics of the LLM engine, vLLM-style, in prometheus-client's default registry.

The families are created once per process with ``model`` and ``version`` labels, so a second model or a
reload only adds label values. The metrics port serves the default registry next to Triton's ``nv_*`` families.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from nereid.backends.llm.outputs import EngineStats

LABELS = ("model", "version")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


def _family(cls: type, name: str, documentation: str, **kwargs: Any) -> Any:
    """Create a family, or return the one already registered under ``name`` (module re-imported)."""
    existing = REGISTRY._names_to_collectors.get(name)  # no public lookup in prometheus-client
    if existing is not None:
        return existing
    return cls(name, documentation, LABELS, **kwargs)


TIME_TO_FIRST_TOKEN = _family(
    Histogram, "nereid_llm_time_to_first_token_seconds", "Time from arrival to the first generated token",
    buckets=TTFT_BUCKETS,
)  # fmt: skip
INTER_TOKEN_LATENCY = _family(
    Histogram, "nereid_llm_inter_token_latency_seconds", "Time between consecutive tokens of a request",
    buckets=ITL_BUCKETS,
)  # fmt: skip
E2E_LATENCY = _family(
    Histogram, "nereid_llm_e2e_request_latency_seconds", "Time from arrival to the final token of a request",
    buckets=E2E_BUCKETS,
)  # fmt: skip
RUNNING = _family(Gauge, "nereid_llm_num_requests_running", "Requests in the engine's running batch")
WAITING = _family(Gauge, "nereid_llm_num_requests_waiting", "Requests waiting for the engine's scheduler")
KV_USAGE = _family(Gauge, "nereid_llm_kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)")
PREFIX_QUERIES = _family(
    Counter, "nereid_llm_prefix_cache_queries", "Prompt tokens looked up in the prefix cache"
)
PREFIX_HITS = _family(Counter, "nereid_llm_prefix_cache_hits", "Prompt tokens found in the prefix cache")
PREEMPTIONS = _family(Counter, "nereid_llm_num_preemptions", "Sequences preempted (to be recomputed)")
PROMPT_TOKENS = _family(Counter, "nereid_llm_prompt_tokens", "Prompt tokens processed")
GENERATION_TOKENS = _family(Counter, "nereid_llm_generation_tokens", "Tokens generated")
SPEC_DRAFTS = _family(
    Counter, "nereid_llm_spec_decode_num_drafts", "Speculative decoding: verifications of a non-empty draft"
)
SPEC_DRAFT_TOKENS = _family(Counter, "nereid_llm_spec_decode_num_draft_tokens", "Draft tokens proposed")
SPEC_ACCEPTED_TOKENS = _family(
    Counter, "nereid_llm_spec_decode_num_accepted_tokens", "Draft tokens accepted by the target model"
)

_GAUGES = (RUNNING, WAITING, KV_USAGE)
# EngineStats counter field -> family; the engine's totals are turned into increments.
_COUNTERS = {
    "prefix_cache_queries": PREFIX_QUERIES,
    "prefix_cache_hits": PREFIX_HITS,
    "num_preemptions": PREEMPTIONS,
    "prompt_tokens": PROMPT_TOKENS,
    "generation_tokens": GENERATION_TOKENS,
    "spec_decode_num_drafts": SPEC_DRAFTS,
    "spec_decode_num_draft_tokens": SPEC_DRAFT_TOKENS,
    "spec_decode_num_accepted_tokens": SPEC_ACCEPTED_TOKENS,
}
_owners: dict[tuple[str, str], object] = {}


class EngineMetrics:
    """The metric children of one engine; called from its driver thread only."""

    def __init__(self, model: str, version: str) -> None:
        from nereid.backends.llm import vllm_names

        vllm_names.register()  # the same families under vLLM's names, for its dashboards
        self.key = (model, version)
        _owners[self.key] = self
        self._ttft = TIME_TO_FIRST_TOKEN.labels(*self.key)
        self._itl = INTER_TOKEN_LATENCY.labels(*self.key)
        self._e2e = E2E_LATENCY.labels(*self.key)
        self._last = dict.fromkeys(_COUNTERS, 0)
        for family in _COUNTERS.values():
            family.labels(*self.key)  # present from the start, at 0

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def finished(self, seconds: float) -> None:
        self._e2e.observe(seconds)

    def update(self, stats: EngineStats) -> None:
        RUNNING.labels(*self.key).set(stats.num_running)
        WAITING.labels(*self.key).set(stats.num_waiting)
        KV_USAGE.labels(*self.key).set(stats.kv_cache_usage)
        for field, family in _COUNTERS.items():
            value = getattr(stats, field)
            if value > self._last[field]:
                family.labels(*self.key).inc(value - self._last[field])
            self._last[field] = value

    def close(self) -> None:
        """Drop the gauges of an unloaded engine, unless a reload of the same version owns them now."""
        if _owners.get(self.key) is not self:
            return
        del _owners[self.key]
        for family in _GAUGES:
            with contextlib.suppress(KeyError):
                family.remove(*self.key)
