"""vLLM-style engine metrics on the metrics port, labelled by model and version."""

from __future__ import annotations

import re

import httpx


def _value(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} missing"
    return float(match.group(1))


def test_engine_metrics_are_exported_per_model(llm, greedy_params):
    text = httpx.get(llm.running.metrics_url).text
    before = _value(text, "nereid_llm_generation_tokens_total", "tiny")
    llm.generate("tiny", {"text_input": "Hello world", "parameters": greedy_params(5)})
    llm.wait_idle("tiny")
    text = httpx.get(llm.running.metrics_url).text
    assert _value(text, "nereid_llm_generation_tokens_total", "tiny") == before + 5
    assert _value(text, "nereid_llm_prompt_tokens_total", "tiny") > 0
    assert _value(text, "nereid_llm_time_to_first_token_seconds_count", "tiny") >= 1
    assert _value(text, "nereid_llm_inter_token_latency_seconds_count", "tiny") >= 4
    assert _value(text, "nereid_llm_e2e_request_latency_seconds_count", "tiny") >= 1
    assert _value(text, "nereid_llm_kv_cache_usage_perc", "tiny") == 0.0
    assert _value(text, "nereid_llm_num_requests_running", "tiny") == 0.0
    for name in ("nereid_llm_prefix_cache_queries_total", "nereid_llm_prefix_cache_hits_total"):
        _value(text, name, "tiny")
    # The second model shares the families (no duplicate registration) with its own label values.
    _value(text, "nereid_llm_num_preemptions_total", "tiny_auto")
    assert 'nv_inference_request_success{model="tiny",version="1"}' in text
