"""Health, metadata, config, statistics, repository and metrics endpoints over HTTP."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException


def add_sub_inputs(rows: int = 1) -> list[httpclient.InferInput]:
    data = np.arange(16 * rows, dtype=np.float32).reshape(rows, 16)
    inputs = [
        httpclient.InferInput("INPUT0", [rows, 16], "FP32"),
        httpclient.InferInput("INPUT1", [rows, 16], "FP32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    return inputs


def test_health_metadata_and_config(repo, start_server):
    repo.add_sub(extra="dynamic_batching { max_queue_delay_microseconds: 50 }")
    running = start_server(repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "nereid"
    assert set(meta["extensions"]) >= {"binary_tensor_data", "statistics", "model_configuration"}
    model = client.get_model_metadata("add_sub")
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    config = client.get_model_config("add_sub")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [16]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 50
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_statistics_count_requests_and_batches(repo, start_server):
    repo.add_sub()
    running = start_server(repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    for rows in (1, 2, 2):
        client.infer("add_sub", add_sub_inputs(rows))
    with pytest.raises(InferenceServerException):
        client.infer("add_sub", add_sub_inputs(1), outputs=[httpclient.InferRequestedOutput("BAD")])
    stats = client.get_inference_statistics("add_sub")["model_stats"][0]
    assert stats["name"] == "add_sub" and stats["version"] == "1"
    assert stats["inference_count"] == 5
    assert stats["execution_count"] == 3
    infer_stats = stats["inference_stats"]
    assert infer_stats["success"]["count"] == 3
    assert infer_stats["fail"]["count"] == 0  # rejected before it reached the model
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert infer_stats[key]["count"] == 3 and infer_stats[key]["ns"] > 0
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    assert sizes == {1: 1, 2: 2}
    assert stats["last_inference"] > 0
    all_stats = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in all_stats] == ["add_sub"]


def test_metrics_use_triton_names(repo, start_server):
    repo.add_sub()
    running = start_server(repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    client.infer("add_sub", add_sub_inputs(3))
    text = urllib.request.urlopen(running.metrics_url, timeout=10).read().decode()
    assert 'nv_inference_request_success{model="add_sub",version="1"} 1.0' in text
    assert 'nv_inference_count{model="add_sub",version="1"} 3.0' in text
    assert 'nv_inference_exec_count{model="add_sub",version="1"} 1.0' in text
    for name in (
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_pending_request_count",
    ):
        assert f"{name}{{" in text
    # Counters are typed under their samples' own name, as Triton writes them (a scraper that finds
    # metadata for `..._total` instead stores Triton's counters untyped).
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert "# TYPE nv_inference_count counter\n" in text
    typed = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE nv_")]
    assert "nv_cache_num_hits_per_model" in typed and not [n for n in typed if n.endswith("_total")]
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["nv_inference_request_success"] == "counter"


def test_repository_index_and_broken_models_fail_alone(repo, start_server):
    repo.add_sub()
    repo.config("bad_field", 'platform: "onnxruntime_onnx"\nmax_batch_size: 2\nnot_a_field: 3\n')
    repo.config("bad_yaml", "input: [ {name: x, data_type: TYPE_NOPE, dims: [1]} ]\n", "config.yaml")
    broken = repo.identity("broken_file")
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx file")
    running = start_server(repo.root, exit_on_error=False)
    client = httpclient.InferenceServerClient(running.http_url)
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["add_sub"]["state"] == "READY"
    assert index["bad_field"]["state"] == "UNAVAILABLE"
    assert "config.pbtxt" in index["bad_field"]["reason"] and "not_a_field" in index["bad_field"]["reason"]
    assert "config.yaml" in index["bad_yaml"]["reason"] and "TYPE_NOPE" in index["bad_yaml"]["reason"]
    assert index["broken_file"]["state"] == "UNAVAILABLE" and index["broken_file"]["reason"]
    assert not client.is_server_ready()  # strict readiness
    assert client.is_server_live()
    assert client.is_model_ready("add_sub") and not client.is_model_ready("broken_file")
    client.infer("add_sub", add_sub_inputs())
    with pytest.raises(InferenceServerException, match=r"has no available versions|not found"):
        client.infer("bad_field", add_sub_inputs())


def test_exit_on_error_refuses_to_start(repo, start_server):
    repo.add_sub()
    repo.config("bad", "max_batch_size: -1\n")
    with pytest.raises(SystemExit, match="failed to load"):
        start_server(repo.root, exit_on_error=True)


def test_non_strict_readiness(repo, start_server):
    repo.add_sub()
    repo.config("bad", "max_batch_size: -1\n")
    running = start_server(repo.root, exit_on_error=False, strict_readiness=False)
    assert httpclient.InferenceServerClient(running.http_url).is_server_ready()


def test_onnx_auto_complete_without_config(repo, start_server):
    repo.identity("auto")
    (repo.root / "auto" / "config.pbtxt").unlink()
    running = start_server(repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    config = client.get_model_config("auto")
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4
    assert config["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}]
    assert "dynamic_batching" in config
    data = np.ones((2, 3), dtype=np.float32)
    tensor = httpclient.InferInput("INPUT0", [2, 3], "FP32")
    tensor.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("auto", [tensor]).as_numpy("OUTPUT0"), data)


def test_explicit_load_and_unload(repo, start_server):
    repo.add_sub()
    repo.add_sub("other")
    running = start_server(repo.root, model_control_mode="explicit", load_model=["add_sub"])
    client = httpclient.InferenceServerClient(running.http_url)
    assert client.is_model_ready("add_sub") and not client.is_model_ready("other")
    client.load_model("other")
    client.infer("other", add_sub_inputs())
    client.unload_model("other")
    assert not client.is_model_ready("other")
    states = {
        (r["name"], r.get("version")): (r["state"], r.get("reason"))
        for r in client.get_model_repository_index()
    }
    assert states[("other", "1")] == ("UNAVAILABLE", "unloaded")
    assert client.is_server_ready()  # unloaded models do not count against readiness
    with pytest.raises(InferenceServerException, match="no model folder"):
        client.load_model("missing")
    with pytest.raises(InferenceServerException, match="invalid model name"):
        client.load_model("..")


def test_load_api_is_refused_without_explicit_mode(repo, start_server):
    repo.add_sub()
    running = start_server(repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    with pytest.raises(InferenceServerException, match="model control is 'none'"):
        client.load_model("add_sub")
