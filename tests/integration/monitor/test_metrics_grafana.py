"""Metric names users have dashboards for (Triton nv_*, vLLM vllm:*), and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "nereid-dashboard.json"
# The LLM engine settings the tiny model is served with (as tests/integration/llm uses them).
ENGINE = {"block_size": 4, "max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 512,
          "kv_cache_bytes": 1 << 20}  # fmt: skip
VLLM = [
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
    "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_per_output_token_seconds_bucket", "vllm:inter_token_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_sum", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:num_preemptions_total", "vllm:num_requests_swapped",
]  # fmt: skip
TRITON = [
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
    "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
]  # fmt: skip


@pytest.fixture(scope="module")
def server(module_repo: Any, start_module_server: Any, tiny_llm_builder: Any, tmp_path_factory: Any) -> Any:
    path = tmp_path_factory.mktemp("tiny-llm")
    tiny_llm_builder(
        path, ["Hello world, hello tokens.", "The quick brown fox."] * 4, vocab_size=280, hidden_size=32,
        intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=512, eos_token_id=0, bos_token_id=None,
    )  # fmt: skip
    params = {**ENGINE, "model": str(path)}
    module_repo.config(
        "tiny",
        'backend: "llm"\nmax_batch_size: 0\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n'
        + "".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
        ),
    )
    module_repo.identity("identity", versions=(1, 2), extra="version_policy: { all { } }")
    running = start_module_server(module_repo.root)
    base = f"http://{running.http_url}"
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    for version in ("1", "2"):
        assert httpx.post(f"{base}/v2/models/identity/versions/{version}/infer", json=body).status_code == 200
    generate = {"text_input": "Hello world", "parameters": {"max_tokens": 4, "temperature": 0}}
    assert httpx.post(f"{base}/v2/models/tiny/generate", json=generate, timeout=60).status_code == 200
    return running


def _scrape(server: Any) -> str:
    deadline = time.monotonic() + 10
    while True:  # the engine updates its gauges and counters after the step that finished the request
        text = httpx.get(server.metrics_url).text
        if (
            re.search(r"^vllm:generation_tokens_total\{[^}]*\} [1-9]", text, re.MULTILINE)
            or time.monotonic() > deadline
        ):
            return text
        time.sleep(0.1)


def _sample_names(text: str) -> set[str]:
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_vllm_names_with_vllm_labels(server):
    text = _scrape(server)
    names = _sample_names(text)
    assert set(VLLM) <= names, set(VLLM) - names
    # The LLM metrics registry is per process: other tests' LLMs (e.g. "tiny_auto") have series too.
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("vllm:generation_tokens_total{") and 'model_name="tiny"' in x
    )
    assert 'engine="1"' in line and float(line.rsplit(" ", 1)[1]) >= 4
    # The same series as nereid_llm_* (the registry is per process: other tests' "tiny" may have counted too).
    ours = next(
        x for x in text.splitlines() if x.startswith('nereid_llm_generation_tokens_total{model="tiny"')
    )
    assert ours.rsplit(" ", 1)[1] == line.rsplit(" ", 1)[1]
    ttft = next(
        x
        for x in text.splitlines()
        if x.startswith("vllm:time_to_first_token_seconds_count{") and 'model_name="tiny"' in x
    )
    assert float(ttft.rsplit(" ", 1)[1]) >= 1
    assert "vllm:time_to_first_token_seconds_created" not in names


def test_triton_names_and_process_metrics(server):
    names = _sample_names(_scrape(server))
    assert set(TRITON) <= names, set(TRITON) - names
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert "nereid_inference_request_duration_seconds_bucket" in names


def test_latency_histogram_counts_each_success(server):
    text = _scrape(server)
    count = re.search(
        r'^nereid_inference_request_duration_seconds_count\{model="identity",version="2"\} (\S+)',
        text,
        re.MULTILINE,
    )
    inf = re.search(r'^nereid_inference_request_duration_seconds_bucket\{le="\+Inf",model="identity",version="2"\} (\S+)|'
                    r'^nereid_inference_request_duration_seconds_bucket\{model="identity",version="2",le="\+Inf"\} (\S+)', text, re.MULTILINE)  # fmt: skip
    assert count and float(count.group(1)) == 1
    assert inf and float(inf.group(1) or inf.group(2)) == 1


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_grafana_dashboard_queries_name_exported_metrics(server):
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency percentiles", "queue depth by priority", "batch size",
                  "traffic split by version", "tokens per second", "time to first token"):  # fmt: skip
        assert topic in titles, topic
    exported = _sample_names(_scrape(server))
    for expr in _expressions(dashboard):
        # Every metric is written as name{...} (or name, in label_values); by/without take "(", not "{".
        metrics = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr) or re.findall(
            r"label_values\((\w+)", expr
        )
        assert metrics, expr
        for metric in metrics:
            assert metric in exported, f"{metric} (in {expr!r}) is not exported"
