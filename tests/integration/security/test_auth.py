"""API keys over HTTP and gRPC (same cases through tritonclient) and the OpenAI routes."""

from __future__ import annotations

import time
import urllib.request
from urllib.error import HTTPError

import openai
import pytest
from tritonclient.utils import InferenceServerException

TRANSPORTS = ["http", "grpc"]
UNAUTHENTICATED = {"http": "401", "grpc": "StatusCode.UNAUTHENTICATED"}
DENIED = {"http": "403", "grpc": "StatusCode.PERMISSION_DENIED"}


@pytest.fixture(scope="module")
def keys_path(tmp_path_factory, module_kit):
    return module_kit.key_file(tmp_path_factory.mktemp("keys") / "keys.json", module_kit.DEFAULT_KEYS)


@pytest.fixture(scope="module")
def server(security_repo, start_module_server, keys_path):
    return start_module_server(security_repo.root, api_key_file=str(keys_path))


def url(server, transport: str) -> str:
    return server.http_url if transport == "http" else server.grpc_url


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_is_open_without_a_key(server, transport, kit):
    c = kit.client(transport, url(server, transport))
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("identity")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("sent", ["none", "wrong", "no-scheme", "empty"])
def test_missing_or_wrong_key_is_unauthenticated_and_says_nothing_more(server, transport, sent, kit):
    headers = {
        "none": None,
        "wrong": kit.bearer("wrong-key"),
        "no-scheme": {"authorization": kit.APP},
        "empty": kit.bearer(""),
    }[sent]
    c = kit.client(transport, url(server, transport))
    with pytest.raises(InferenceServerException) as info:
        kit.infer(transport, c, headers=headers)
    assert kit.status(info.value) == UNAUTHENTICATED[transport]
    assert "missing or invalid API key" in str(info.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_scoped_key_reaches_its_model_only(server, transport, kit):
    c = kit.client(transport, url(server, transport))
    kit.infer(transport, c, headers=kit.bearer(kit.APP))
    assert c.get_model_metadata("identity", headers=kit.bearer(kit.APP))
    # Another model, existing or not, gets the same refusal: nothing leaks about what exists.
    messages = set()
    for model in ("private", "no-such-model"):
        with pytest.raises(InferenceServerException) as info:
            kit.infer(transport, c, model=model, headers=kit.bearer(kit.APP))
        assert kit.status(info.value) == DENIED[transport]
        messages.add(str(info.value))
    assert len(messages) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_key_without_the_group_is_denied(server, transport, kit):
    c = kit.client(transport, url(server, transport))
    for call in (
        lambda: c.get_inference_statistics("identity", headers=kit.bearer(kit.APP)),
        lambda: c.get_model_config("identity", headers=kit.bearer(kit.APP)),
        lambda: c.get_model_repository_index(headers=kit.bearer(kit.APP)),
        lambda: c.unload_model("identity", headers=kit.bearer(kit.APP)),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert kit.status(info.value) == DENIED[transport]
    assert c.get_inference_statistics("identity", headers=kit.bearer(kit.ADMIN))
    # Model control stays off the network unless enabled: the admin passes the gate, the core refuses.
    with pytest.raises(InferenceServerException, match="not allowed"):
        c.unload_model("identity", headers=kit.bearer(kit.ADMIN))


def test_grpc_stream_checks_every_message(server, kit):
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    results: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    c.start_stream(lambda result, error: results.put(error or result), headers=kit.bearer(kit.APP))
    tensor = grpcclient.InferInput("INPUT0", [2], "FP32")
    tensor.set_data_from_numpy(np.ones(2, dtype=np.float32))
    c.async_stream_infer("identity", [tensor])
    first = results.get(timeout=10)
    assert not isinstance(first, InferenceServerException)
    c.async_stream_infer("private", [tensor])
    error = results.get(timeout=10)
    assert isinstance(error, InferenceServerException)
    assert kit.status(error) == DENIED["grpc"]
    c.stop_stream()


def test_http_refusals_carry_the_right_headers(server, kit):
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/identity")
    with pytest.raises(HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert info.value.headers.get("server") is None
    request.add_header("Authorization", f"Bearer {kit.APP}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers.get("server") is None


def test_openai_routes_take_the_bearer_key(server, kit):
    base = f"http://{server.http_url}/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong").models.list()
    app = openai.OpenAI(base_url=base, api_key=kit.APP, max_retries=0)
    app.models.list()
    with pytest.raises(openai.PermissionDeniedError):
        app.completions.create(model="private", prompt="hi", max_tokens=2)
    # Past the gate the handler answers: "identity" is no LLM, so it is not found.
    with pytest.raises(openai.NotFoundError):
        app.completions.create(model="identity", prompt="hi", max_tokens=2)


def test_key_file_reloads_without_a_restart(security_repo, start_server, tmp_path, kit):
    path = kit.key_file(tmp_path / "keys.json", kit.DEFAULT_KEYS)
    running = start_server(security_repo.root, api_key_file=str(path))
    for transport in TRANSPORTS:
        kit.infer(transport, kit.client(transport, url(running, transport)), headers=kit.bearer(kit.APP))
    kit.key_file(path, [{"name": "other", "key": kit.OTHER}])
    time.sleep(1.2)  # the file is looked at no more than once a second
    for transport in TRANSPORTS:
        c = kit.client(transport, url(running, transport))
        with pytest.raises(InferenceServerException) as info:
            kit.infer(transport, c, headers=kit.bearer(kit.APP))
        assert kit.status(info.value) == UNAUTHENTICATED[transport]
        kit.infer(transport, c, model="private", headers=kit.bearer(kit.OTHER))
    # A broken file keeps the keys already loaded rather than opening or closing the server.
    path.write_text("{not json")
    later = time.time() + 4
    import os

    os.utime(path, (later, later))
    time.sleep(1.2)
    kit.infer("http", kit.client("http", running.http_url), headers=kit.bearer(kit.OTHER))


def test_api_key_from_the_environment_setting(security_repo, start_server, kit):
    running = start_server(security_repo.root, api_key="env-key-0123456789")
    for transport in TRANSPORTS:
        c = kit.client(transport, url(running, transport))
        kit.infer(transport, c, model="private", headers=kit.bearer("env-key-0123456789"))
        with pytest.raises(InferenceServerException):
            kit.infer(transport, c)
