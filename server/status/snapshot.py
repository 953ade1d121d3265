"""The JSON the status page polls: models, counters, queue depth, LLM engines, recent errors.

Counters are cumulative; the page turns two snapshots into rates and mean latencies, so the
server keeps no time series of its own.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nereid.server.core import InferenceCore

STARTED = time.time()


def snapshot(core: InferenceCore) -> dict[str, Any]:
    return {
        "time": time.time(),
        "server": {
            "live": core.live(),
            "ready": core.ready(),
            "uptime_s": round(time.time() - STARTED, 1),
            "extensions": list(core.server_metadata().extensions),
            "tracing": core.tracing.active,
        },
        "models": [
            {
                "name": row.name,
                "version": row.version,
                "state": row.state,
                "reason": row.reason,
                "configured_share": _configured_share(core, row.name, row.version),
            }
            for row in core.repository_index()
        ],
        "stats": [_stats(model) for model in core.loaded_models()],
        "llm": _llm_engines(),
        "errors": [asdict(e) for e in reversed(core.recent_errors.items())],
    }


def _configured_share(core: InferenceCore, name: str, version: str) -> float | None:
    """The version's share of unversioned traffic from the model's routing section (None: no section)."""
    entry = core.repository.models.get(name)
    policy = entry.routing if entry is not None else None
    if policy is None or not version.isdigit():
        return None
    return policy.shares().get(int(version), 0.0)


def _stats(model: Any) -> dict[str, Any]:
    s = model.stats.snapshot(model.name, model.version_str)
    inf = s.inference_stats
    return {
        "model": model.name,
        "version": model.version_str,
        "success": inf.success.count,
        "failure": inf.fail.count,
        "success_ns": inf.success.ns,
        "queue_ns": inf.queue.ns,
        "queue_count": inf.queue.count,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "pending": model.stats.pending,
        "pending_by_priority": {str(k): v for k, v in sorted(model.stats.pending_by_priority.items())},
    }


def _llm_engines() -> list[dict[str, Any]]:
    """KV-cache use and request counts of every LLM engine (present once the LLM backend is loaded)."""
    metrics = sys.modules.get("nereid.backends.llm.metrics")
    if metrics is None:
        return []
    engines: dict[tuple[str, str], dict[str, Any]] = {}
    for key, family in (
        ("kv_cache_usage", metrics.KV_USAGE),
        ("running", metrics.RUNNING),
        ("waiting", metrics.WAITING),
    ):
        for metric in family.collect():
            for sample in metric.samples:
                ident = (sample.labels["model"], sample.labels["version"])
                engines.setdefault(ident, {"model": ident[0], "version": ident[1]})[key] = sample.value
    return [engines[k] for k in sorted(engines)]
