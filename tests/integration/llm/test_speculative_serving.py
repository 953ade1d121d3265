"""A model served with ``speculative_config``: same greedy text as without it over HTTP and gRPC, vLLM's
spec-decode counters on the metrics port, and bad configs failing the load with the parameter named."""

from __future__ import annotations

import json
import queue
import re

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"
NGRAM = '{\\"method\\": \\"ngram\\", \\"num_speculative_tokens\\": 3, \\"prompt_lookup_max\\": 3}'


@pytest.fixture
def served(repo, start_server, tiny_llama, llm_config):
    repo.config("plain", llm_config(str(tiny_llama)))
    repo.config("spec", llm_config(str(tiny_llama), speculative_config=NGRAM))
    return start_server(repo.root)


def _http_text(running, model: str, max_tokens: int) -> str:
    body = {
        "text_input": PROMPT,
        "parameters": {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True},
    }
    response = httpx.post(f"http://{running.http_url}/v2/models/{model}/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["text_output"]


def _grpc_text(running, model: str, max_tokens: int) -> str:
    """Stream one request over gRPC ModelStreamInfer and join its text responses."""
    params = {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}
    inputs = []
    for name, value in (("text_input", PROMPT), ("sampling_parameters", json.dumps(params))):
        tensor = grpcclient.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=object))
        inputs.append(tensor)
    items: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(running.grpc_url)
    client.start_stream(lambda result, error: items.put((result, error)))
    texts = []
    try:
        client.async_stream_infer(model, inputs, request_id="s1")
        while True:
            result, error = items.get(timeout=60)
            assert error is None, error
            texts.append(result.as_numpy("text_output")[0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                return "".join(texts)
    finally:
        client.stop_stream()
        client.close()


def _counter(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}\{{engine="1",model_name="{model}"\}} (\S+)$', text, re.MULTILINE)
    if match is None:
        match = re.search(rf'^{name}\{{model_name="{model}",engine="1"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} missing"
    return float(match.group(1))


def test_speculative_model_generates_the_plain_text_over_both_transports(served):
    assert _http_text(served, "spec", 24) == _http_text(served, "plain", 24)
    assert _grpc_text(served, "spec", 24) == _grpc_text(served, "plain", 24)
    metrics = httpx.get(served.metrics_url).text
    drafts = _counter(metrics, "vllm:spec_decode_num_draft_tokens_total", "spec")
    accepted = _counter(metrics, "vllm:spec_decode_num_accepted_tokens_total", "spec")
    assert _counter(metrics, "vllm:spec_decode_num_drafts_total", "spec") > 0
    assert 0 <= accepted <= drafts  # a random tiny model rarely repeats: acceptance is tested per engine
    assert _counter(metrics, "vllm:spec_decode_num_drafts_total", "plain") == 0


def test_bad_speculative_config_fails_the_load_naming_it(repo, start_server, tiny_llama, llm_config):
    bad = {
        "not_json": ("{method", "parameter 'speculative_config'"),
        "bad_method": ('{\\"method\\": \\"eagle\\"}', "speculative method must be one of"),
        "unknown_key": ('{\\"methd\\": \\"ngram\\"}', "unknown key 'methd'"),
        "bad_k": ('{\\"num_speculative_tokens\\": 0}', "num_speculative_tokens must be >= 1"),
        "no_draft": ('{\\"method\\": \\"draft\\", \\"model\\": \\"no/such\\"}', "speculative_config.model"),
    }
    for name, (value, _) in bad.items():
        repo.config(name, llm_config(str(tiny_llama), speculative_config=value))
    running = start_server(repo.root, exit_on_error=False)
    reasons = {row.name: row.reason for row in running.core.repository_index()}
    for name, (_, message) in bad.items():
        assert message in reasons[name], (name, reasons[name])
    client = grpcclient.InferenceServerClient(running.grpc_url)
    assert not client.is_model_ready("bad_method")
    assert json.loads(httpx.get(f"http://{running.http_url}/v2/health/ready").text or "{}") is not None
