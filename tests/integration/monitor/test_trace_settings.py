"""Triton's trace extension at run time: global and per-model settings over HTTP and gRPC, bad values."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture
def server(repo: Any, start_server: Any, tmp_path: Any) -> Any:
    repo.identity("identity")
    repo.identity("other")
    return start_server(repo.root, trace_config=[f"dir={tmp_path / 'traces'}", "rate=1000"])


def _grpc_settings(client: grpcclient.InferenceServerClient, model: str = "", **update: Any) -> dict:
    if update:
        answer = client.update_trace_settings(model_name=model or None, settings=update, as_json=True)
    else:
        answer = client.get_trace_settings(model_name=model or None, as_json=True)
    return {k: v["value"] for k, v in answer["settings"].items()}


def test_http_global_and_model_settings(server, tmp_path):
    with httpclient.InferenceServerClient(server.http_url) as client:
        start = client.get_trace_settings()
        assert start["trace_level"] == ["OFF"] and start["trace_rate"] == "1000"
        assert not server.core.tracing.active
        changed = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "5"})
        assert changed["trace_level"] == ["TIMESTAMPS"] and changed["trace_rate"] == "5"
        assert server.core.tracing.active
        model = client.update_trace_settings("identity", {"trace_rate": "2", "trace_count": "3"})
        assert (
            model["trace_rate"] == "2"
            and model["trace_count"] == "3"
            and model["trace_level"] == ["TIMESTAMPS"]
        )
        assert client.get_trace_settings("other")["trace_rate"] == "5"  # no override: the global value
        cleared = client.update_trace_settings("identity", {"trace_rate": None})
        assert cleared["trace_rate"] == "5" and cleared["trace_count"] == "3"
        target = tmp_path / "traces" / "run.jsonl"
        assert client.update_trace_settings(settings={"trace_file": str(target)})["trace_file"] == str(target)
        off = client.update_trace_settings(settings={"trace_level": ["OFF"]})
        assert off["trace_level"] == ["OFF"]


def test_grpc_global_and_model_settings(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert _grpc_settings(client)["trace_level"] == ["OFF"]
        assert _grpc_settings(client, trace_level=["TIMESTAMPS"], trace_rate="7")["trace_rate"] == ["7"]
        assert _grpc_settings(client, "identity", trace_rate="3")["trace_rate"] == ["3"]
        assert _grpc_settings(client, "other")["trace_rate"] == ["7"]
        assert _grpc_settings(client, "identity", trace_rate=None)["trace_rate"] == ["7"]
        assert server.core.tracing.active


BAD = [
    ({"trace_rate": "0"}, "trace_rate"),
    ({"trace_rate": "-5"}, "trace_rate"),
    ({"trace_rate": "often"}, "trace_rate"),
    ({"trace_level": ["LOUD"]}, "trace_level"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "trace_level"),
    ({"trace_count": "-2"}, "trace_count"),
    ({"trace_file": "/etc/passwd"}, "trace folder"),
    ({"trace_file": "../escape.json"}, "trace folder"),
    ({"trace_level": ["TIMESTAMPS"], "trace_rate": "0"}, "trace_rate"),  # nothing applied, not even the level
    ({"colour": "blue"}, "unknown trace setting"),
]


@pytest.mark.parametrize(("update", "needle"), BAD)
def test_absurd_settings_are_refused_over_http_and_change_nothing(server, update, needle):
    url = f"http://{server.http_url}/v2/trace/setting"
    before = httpx.get(url).json()
    response = httpx.post(url, json=update)
    assert response.status_code == 400 and needle in response.json()["error"]
    assert httpx.get(url).json() == before and not server.core.tracing.active


@pytest.mark.parametrize(("update", "needle"), BAD[:6])
def test_absurd_settings_are_refused_over_grpc(server, update, needle):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        before = _grpc_settings(client)
        with pytest.raises(InferenceServerException) as info:
            client.update_trace_settings(settings=update)
        assert "INVALID_ARGUMENT" in str(info.value.status()) and needle in info.value.message()
        assert _grpc_settings(client) == before


def test_unknown_model_and_per_model_file_are_refused(server):
    base = f"http://{server.http_url}/v2/models"
    assert httpx.get(f"{base}/nope/trace/setting").status_code == 404
    response = httpx.post(f"{base}/identity/trace/setting", json={"trace_file": "x.json"})
    assert response.status_code == 400
    assert httpx.put(f"http://{server.http_url}/v2/trace/setting").status_code == 405


def test_rate_and_count_sample_requests(server):
    tracing = server.core.tracing
    tracing.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": "4", "trace_count": "-1"})
    sampled = [tracing.begin("identity", None, None, "http") for _ in range(12)]
    assert sum(t is not None for t in sampled) == 3
    tracing.update("identity", {"trace_rate": "1", "trace_count": "2"})
    sampled = [tracing.begin("identity", None, None, "http") for _ in range(5)]
    assert sum(t is not None for t in sampled) == 2
