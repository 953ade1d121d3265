"""The response cache over both transports with tritonclient: hits skip the backend, misses fill it.

``cached`` (add_sub on ONNX Runtime) enables ``response_cache``; the server runs with
``--cache-config local,size=...``. The backend's execution count comes from the statistics
extension (Triton's ``execution_count`` leaves cache hits out), hits and misses from its
``cache_hit`` / ``cache_miss`` entries and from the ``nv_cache_*`` metrics.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

CACHE = "response_cache { enable: true }"
PROTOCOLS = ("http", "grpc")


class Client:
    """add_sub requests and statistics over one transport."""

    def __init__(self, running: Any, protocol: str) -> None:
        self.running, self.protocol = running, protocol
        self.module: Any = httpclient if protocol == "http" else grpcclient
        url = running.http_url if protocol == "http" else running.grpc_url
        self.client = self.module.InferenceServerClient(url)

    def infer(self, model: str, a: np.ndarray, outputs: list[str] | None = None, **kwargs: Any) -> Any:
        tensors = []
        for name, data in (("INPUT0", a), ("INPUT1", np.ones_like(a))):
            tensor = self.module.InferInput(name, list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            tensors.append(tensor)
        wanted = None
        if outputs is not None:
            binary = kwargs.pop("binary_data", True)
            extra = {"binary_data": binary} if self.protocol == "http" else {}
            wanted = [self.module.InferRequestedOutput(name, **extra) for name in outputs]
        return self.client.infer(model, tensors, outputs=wanted, **kwargs)

    def stats(self, model: str) -> dict[str, int]:
        raw = self.client.get_inference_statistics(model, as_json=True) if self.protocol == "grpc" else None
        entry = (raw or self.client.get_inference_statistics(model))["model_stats"][0]
        infer = entry["inference_stats"]
        return {
            "executions": int(entry.get("execution_count", 0)),
            "success": int(infer["success"].get("count", 0)),
            "hits": int(infer["cache_hit"].get("count", 0)),
            "misses": int(infer["cache_miss"].get("count", 0)),
            "hit_ns": int(infer["cache_hit"].get("ns", 0)),
        }

    def close(self) -> None:
        self.client.close()


def metric(running: Any, name: str, model: str | None = None) -> float | None:
    text = urllib.request.urlopen(running.metrics_url).read().decode()
    labels = r"\{" + rf'model="{model}",version="1"' + r"\}" if model else ""
    found = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def data(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    module_repo.add_sub("cached", extra=CACHE)
    module_repo.add_sub("uncached")
    return start_module_server(module_repo.root, cache_config=["local,size=1048576"])


@pytest.fixture(params=PROTOCOLS)
def client(request, server):
    opened = Client(server, request.param)
    yield opened
    opened.close()


def test_a_repeated_request_is_a_hit_and_skips_the_backend(client, server):
    a = data(1 if client.protocol == "http" else 2)
    before = client.stats("cached")
    hits_metric = metric(server, "nv_cache_num_hits_per_model", "cached") or 0
    first = client.infer("cached", a)
    second = client.infer("cached", a)
    after = client.stats("cached")
    for name, expected in (("OUTPUT0", a + 1), ("OUTPUT1", a - 1)):
        np.testing.assert_allclose(first.as_numpy(name), expected)
        np.testing.assert_array_equal(second.as_numpy(name), first.as_numpy(name))
    assert after["executions"] == before["executions"] + 1
    assert after["misses"] == before["misses"] + 1 and after["hits"] == before["hits"] + 1
    assert after["success"] == before["success"] + 2 and after["hit_ns"] > before["hit_ns"]
    assert metric(server, "nv_cache_num_hits_per_model", "cached") == hits_metric + 1
    for name in ("nv_cache_num_misses_per_model", "nv_cache_hit_duration_per_model"):
        assert metric(server, name, "cached") is not None
    assert metric(server, "nv_cache_num_entries") >= 1
    # A model that does not enable the cache runs every request and has no cache series.
    plain = client.stats("uncached")
    client.infer("uncached", a)
    client.infer("uncached", a)
    assert client.stats("uncached")["executions"] == plain["executions"] + 2
    assert metric(server, "nv_cache_num_hits_per_model", "uncached") is None


def test_one_changed_byte_or_parameter_is_a_miss(client):
    a = data(3 if client.protocol == "http" else 4)
    client.infer("cached", a)
    base = client.stats("cached")
    changed = a.copy()
    changed.view(np.uint8)[0, 5] ^= 1  # one byte of one input
    client.infer("cached", changed)
    client.infer("cached", a, parameters={"flavour": "other"})  # a parameter the model could read
    after = client.stats("cached")
    assert after["executions"] == base["executions"] + 2 and after["misses"] == base["misses"] + 2
    # Scheduling parameters cannot change the answer: still a hit.
    client.infer("cached", a, priority=1, timeout=5_000_000)
    assert client.stats("cached")["hits"] == after["hits"] + 1
    assert client.stats("cached")["executions"] == after["executions"]


def test_requested_outputs_key_the_entry_and_binary_data_does_not(client):
    a = data(5 if client.protocol == "http" else 6)
    base = client.stats("cached")
    only = client.infer("cached", a, outputs=["OUTPUT1"])
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_allclose(only.as_numpy("OUTPUT1"), a - 1)
    full = client.infer("cached", a)  # every output: its own entry, not the one above
    np.testing.assert_allclose(full.as_numpy("OUTPUT0"), a + 1)
    again = client.infer("cached", a, outputs=["OUTPUT1"], binary_data=False)
    assert again.as_numpy("OUTPUT0") is None
    np.testing.assert_allclose(again.as_numpy("OUTPUT1"), a - 1)
    after = client.stats("cached")
    assert after["executions"] == base["executions"] + 2 and after["hits"] == base["hits"] + 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_least_recently_used_entry_is_evicted_at_the_size_limit(repo, start_server, protocol):
    repo.add_sub("cached", extra=CACHE)
    # One entry: 2 outputs x 16 FP32 + a 16-byte key = 144 bytes; 300 bytes hold two.
    running = start_server(repo.root, cache_config=["local,size=300"])
    client = Client(running, protocol)
    a, b, c = data(10), data(11), data(12)
    for value in (a, b, c):
        client.infer("cached", value)
    assert client.stats("cached")["executions"] == 3
    client.infer("cached", c)  # still cached
    assert client.stats("cached")["executions"] == 3
    client.infer("cached", a)  # evicted by c
    assert client.stats("cached")["executions"] == 4
    assert metric(running, "nv_cache_num_evictions") >= 2
    assert metric(running, "nv_cache_num_entries") == 2
    client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_without_a_server_cache_the_model_is_served_uncached(repo, start_server, protocol, caplog):
    repo.add_sub("cached", extra=CACHE)
    with caplog.at_level("WARNING"):
        running = start_server(repo.root)
    assert "enables response_cache but is served uncached" in caplog.text
    client = Client(running, protocol)
    a = data(20)
    client.infer("cached", a)
    client.infer("cached", a)
    stats = client.stats("cached")
    assert stats["executions"] == 2 and stats["hits"] == 0 and stats["misses"] == 0
    assert metric(running, "nv_cache_num_hits_per_model", "cached") is None
    client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_decoupled_model_with_the_cache_fails_to_load(repo, start_server, protocol):
    repo.add_sub("streamy", extra=CACHE + "\nmodel_transaction_policy { decoupled: true }")
    running = start_server(repo.root, cache_config=["local,size=4096"], model_control_mode="explicit")
    client = Client(running, protocol).client
    try:
        client.load_model("streamy")
    except InferenceServerException as exc:
        message = exc.message()
    else:
        raise AssertionError("a decoupled model with response_cache loaded")
    assert "response cache does not currently support model 'streamy'" in message
    assert "decoupled" in message
    assert not client.is_model_ready("streamy")
    client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_reloaded_version_never_answers_from_the_old_files_entries(repo, start_server, protocol):
    repo.add_sub("cached", extra=CACHE)
    running = start_server(repo.root, cache_config=["local,size=65536"], model_control_mode="explicit")
    client = Client(running, protocol)
    client.client.load_model("cached")
    a = data(30)
    np.testing.assert_allclose(client.infer("cached", a).as_numpy("OUTPUT0"), a + 1)
    repo.add_sub("cached", extra=CACHE, scale=3.0)  # same version, new model file
    client.client.load_model("cached")
    np.testing.assert_allclose(client.infer("cached", a).as_numpy("OUTPUT0"), (a + 1) * 3, rtol=1e-6)
    np.testing.assert_allclose(client.infer("cached", a).as_numpy("OUTPUT0"), (a + 1) * 3, rtol=1e-6)
    assert client.stats("cached")["hits"] == 1
    client.close()
