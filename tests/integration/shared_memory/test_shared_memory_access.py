"""Who may use shared memory: off by default (as Triton since 26.04), and the restricted ``shared-memory`` group."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

DISABLED = "Client shared memory is disabled"


@pytest.fixture(scope="module")
def default_server(module_repo, start_module_server):
    module_repo.add_sub()
    return start_module_server(module_repo.root)


def _post(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_client_shared_memory_is_off_by_default(default_server):
    http = httpclient.InferenceServerClient(default_server.http_url)
    grpc = grpcclient.InferenceServerClient(default_server.grpc_url)
    for client in (http, grpc):
        with pytest.raises(InferenceServerException, match=DISABLED):
            client.register_system_shared_memory("r", "/nereid_any", 64)
        with pytest.raises(InferenceServerException, match=DISABLED):
            client.get_system_shared_memory_status()
        with pytest.raises(InferenceServerException, match=DISABLED):
            client.register_cuda_shared_memory("g", b"\x00" * 64, 0, 64)
        module = httpclient if client is http else grpcclient
        inputs = [module.InferInput(f"INPUT{i}", [1, 16], "FP32") for i in range(2)]
        inputs[0].set_shared_memory("r", 64)
        inputs[1].set_data_from_numpy(np.zeros((1, 16), np.float32))
        with pytest.raises(InferenceServerException, match=DISABLED):
            client.infer("add_sub", inputs)
        metadata = client.get_server_metadata()
        extensions = metadata["extensions"] if isinstance(metadata, dict) else list(metadata.extensions)
        assert "system_shared_memory" not in extensions
        assert client.is_server_ready()


def test_http_refusals_are_json_errors(default_server):
    base = f"http://{default_server.http_url}/v2"
    status, body = _post(f"{base}/systemsharedmemory/region/r/register", {"key": "/x", "byte_size": 8})
    assert status == 501 and DISABLED in body["error"]
    status, body = _post(f"{base}/cudasharedmemory/region/r/register", {"byte_size": 8})
    assert status == 501 and DISABLED in body["error"]


def test_shared_memory_apis_are_a_restricted_group(module_repo, start_server):
    running = start_server(
        module_repo.root,
        allow_client_shm=True,
        http_restricted_api=["shared-memory:admin-key=admin-value"],
        grpc_restricted_protocol=["shared-memory:admin-key=admin-value"],
    )
    http = httpclient.InferenceServerClient(running.http_url)
    grpc = grpcclient.InferenceServerClient(running.grpc_url)
    with pytest.raises(
        InferenceServerException, match="This API is restricted, expecting header 'admin-key'"
    ):
        http.get_system_shared_memory_status()
    with pytest.raises(InferenceServerException, match="This API is restricted"):
        http.get_cuda_shared_memory_status()
    with pytest.raises(InferenceServerException, match="This protocol is restricted"):
        grpc.get_system_shared_memory_status()
    with pytest.raises(InferenceServerException, match="This protocol is restricted"):
        grpc.unregister_cuda_shared_memory()
    assert http.get_system_shared_memory_status(headers={"admin-key": "admin-value"}) == []
    answer = grpc.get_system_shared_memory_status(headers={"triton-grpc-protocol-admin-key": "admin-value"})
    assert len(answer.regions) == 0
    assert http.is_server_ready() and grpc.is_server_ready()
