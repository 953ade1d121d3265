"""Triton's answers for versions the policy does not serve and models that are not loaded, both transports.

Triton (``HandleModelReady``) answers a model that is not ready with a bare 400 over HTTP and
``ready: false`` with an OK status over gRPC; statistics of a model or version that is not loaded
are INVALID_ARG (400 / INVALID_ARGUMENT) with "requested model 'x' is not available" and
"requested model version is not available for model 'x'".
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def server(module_repo: Any, start_module_server: Any) -> Any:
    module_repo.identity("latest_only", versions=(1, 2))  # default policy: latest 1 -> only version 2
    return start_module_server(module_repo.root)


def test_readiness_of_a_version_the_policy_does_not_serve(server):
    base = f"http://{server.http_url}/v2/models"
    assert httpx.get(f"{base}/latest_only/versions/2/ready").status_code == 200
    for path in ("latest_only/versions/1/ready", "latest_only/versions/7/ready", "nope/ready"):
        response = httpx.get(f"{base}/{path}")
        assert response.status_code == 400, path
        assert "is not ready" in response.json()["error"]
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_model_ready("latest_only", "2")
        assert not client.is_model_ready("latest_only", "1") and not client.is_model_ready("nope")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_model_ready("latest_only", "2")
        assert not client.is_model_ready("latest_only", "1") and not client.is_model_ready("nope")
        assert client.is_server_ready()


CASES = [
    (("nope", ""), "requested model 'nope' is not available"),
    (("latest_only", "1"), "requested model version is not available for model 'latest_only'"),
    (("latest_only", "7"), "requested model version is not available for model 'latest_only'"),
]


@pytest.mark.parametrize(("target", "message"), CASES)
def test_statistics_of_what_is_not_loaded_is_invalid_argument(server, target, message):
    name, version = target
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics(name, version)
        assert info.value.status() == "400" and info.value.message() == message
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics(name, version)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and message in info.value.message()
        stats = client.get_inference_statistics("latest_only").model_stats
        assert [(s.name, s.version) for s in stats] == [("latest_only", "2")]
