"""Ensembles from the outside: tritonclient over HTTP and gRPC, metadata, stats, metrics."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

TRANSPORTS = ["http", "grpc"]


def client(server, transport):
    if transport == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def infer(server, transport, model, x, outputs=None, **kw):
    lib, c = client(server, transport)
    inp = lib.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [lib.InferRequestedOutput(o) for o in outputs] if outputs else None
    return c.infer(model, [inp], outputs=outs, **kw)


@pytest.fixture
def chain(ens, repo, start_server):
    ens.step("add1", amount=1)
    ens.step("add10", amount=10)
    ens.step("add100", amount=100)
    ens.ensemble(
        "chain",
        ens.config(
            ens.io({"IN": ""}, {"OUT": "", "MID": ""}),
            ens.entry("add1", {"INPUT0": "IN"}, {"OUTPUT0": "MID"}),
            ens.entry("add10", {"INPUT0": "MID"}, {"OUTPUT0": "M2"}),
            ens.entry("add100", {"INPUT0": "M2"}, {"OUTPUT0": "OUT"}),
        ),
    )
    return start_server(repo.root)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_chain_infer_and_metadata(chain, transport):
    x = np.array([1, 2, 3], dtype=np.float32)
    result = infer(chain, transport, "chain", x)
    np.testing.assert_array_equal(result.as_numpy("OUT"), x + 111)
    np.testing.assert_array_equal(result.as_numpy("MID"), x + 1)
    _, c = client(chain, transport)
    assert c.is_model_ready("chain")
    meta = c.get_model_metadata("chain")
    platform = meta["platform"] if transport == "http" else meta.platform
    assert platform == "ensemble"


def test_requested_output_subset_skips_steps(chain, calls):
    x = np.array([5], dtype=np.float32)
    calls.clear()
    result = infer(chain, "http", "chain", x, outputs=["MID"])
    np.testing.assert_array_equal(result.as_numpy("MID"), x + 1)
    assert result.as_numpy("OUT") is None
    assert calls.models() == ["add1"]


def test_stats_and_metrics(chain):
    x = np.array([1], dtype=np.float32)
    for _ in range(3):
        infer(chain, "http", "chain", x)
    _, c = client(chain, "http")
    stats = c.get_inference_statistics("chain")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 3
    assert [s["name"] for s in stats["composing_models"]] == ["add1", "add10", "add100"]
    assert all(s["success"]["count"] == 3 for s in stats["composing_models"])
    step_stats = c.get_inference_statistics("add10")["model_stats"][0]
    assert step_stats["inference_stats"]["success"]["count"] == 3
    _, g = client(chain, "grpc")
    gstats = g.get_inference_statistics("chain").model_stats[0]
    assert gstats.inference_stats.success.count == 3
    body = urllib.request.urlopen(chain.metrics_url).read().decode()
    assert 'nv_inference_request_success{model="chain",version="1"} 3.0' in body


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_diamond_runs_branches_concurrently(ens, repo, start_server, transport):
    ens.step("slow_a", amount=1, sleep_ms=300)
    ens.step("slow_b", amount=2, sleep_ms=300)
    ens.ensemble(
        "diamond",
        ens.config(
            ens.io({"IN": ""}, {"A": "", "B": ""}),
            ens.entry("slow_a", {"INPUT0": "IN"}, {"OUTPUT0": "A"}),
            ens.entry("slow_b", {"INPUT0": "IN"}, {"OUTPUT0": "B"}),
        ),
    )
    server = start_server(repo.root)
    x = np.array([1], dtype=np.float32)
    infer(server, transport, "diamond", x)  # warm
    start = time.perf_counter()
    result = infer(server, transport, "diamond", x)
    elapsed = time.perf_counter() - start
    assert result.as_numpy("A")[0] == 2 and result.as_numpy("B")[0] == 3
    assert elapsed < 0.5, elapsed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_failing_step_names_model(ens, repo, start_server, transport):
    ens.step("ok", amount=1)
    ens.step("bad", op="fail")
    ens.ensemble(
        "broken",
        ens.config(
            ens.io({"IN": ""}, {"OUT": ""}),
            ens.entry("ok", {"INPUT0": "IN"}, {"OUTPUT0": "X"}),
            ens.entry("bad", {"INPUT0": "X"}, {"OUTPUT0": "OUT"}),
        ),
    )
    server = start_server(repo.root)
    with pytest.raises(InferenceServerException) as info:
        infer(server, transport, "broken", np.array([1], dtype=np.float32))
    assert "bad" in info.value.message() and "boom from bad" in info.value.message()
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    # other models keep serving
    _, c = client(server, transport)
    assert c.is_model_ready("ok")
