"""Repository API misuse gets clear errors and leaves a consistent index."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def test_unknown_models(root, start_server, kit):
    kit.make_model(root, "m")
    running = start_server(root, model_control_mode="explicit")
    for client in (
        httpclient.InferenceServerClient(running.http_url),
        grpcclient.InferenceServerClient(running.grpc_url),
    ):
        for call in (lambda c=client: c.load_model("nope"), lambda c=client: c.unload_model("nope")):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert "nope" in str(info.value)
    assert running.core.repository_index() == []


def test_file_uploads_load_and_paths_escaping_the_folder_are_refused(root, start_server, kit):
    running = start_server(root, model_control_mode="explicit")
    config = json.dumps(
        {
            "backend": "lifecycle_test",
            "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        }
    )
    grpc_client = grpcclient.InferenceServerClient(running.grpc_url)
    grpc_client.load_model("up", config=config, files={"file:3/factor": b"2.5"})
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(kit.ones())
    result = grpc_client.infer("up", [tensor])
    assert result.as_numpy("OUTPUT0").tolist() == [[2.5] * 4]
    assert result.get_response().model_version == "3"
    for bad in ("file:../escape", "file:/etc/passwd", "file:1/../../x", "file:1//x"):
        body = {"parameters": {"config": config, bad: base64.b64encode(b"x").decode()}}
        request = urllib.request.Request(
            f"http://{running.http_url}/v2/repository/models/up/load",
            json.dumps(body).encode(),
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request)
        assert info.value.code == 400 and "model folder" in info.value.read().decode(), bad
    with pytest.raises(InferenceServerException) as info:
        grpc_client.load_model("up", files={"file:1/x": b"x"})  # files need a config
    assert "config" in str(info.value)
    assert grpc_client.is_model_ready("up", "3")  # the refused loads left it serving


def test_concurrent_load_and_unload_of_one_model_leave_a_consistent_index(root, start_server, kit):
    kit.make_model(root, "m", sleep_ms=1)
    running = start_server(root, model_control_mode="explicit", load_model=["m"])
    errors: list[str] = []

    def churn(action: str) -> None:
        client = httpclient.InferenceServerClient(running.http_url)
        for _ in range(6):
            try:
                getattr(client, action)("m")
            except InferenceServerException as exc:
                errors.append(str(exc))

    threads = [
        threading.Thread(target=churn, args=(a,)) for a in ("load_model", "unload_model", "load_model")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    entry = running.core.repository.models["m"]
    rows = running.core.repository_index()
    if entry.versions:
        assert [(r.version, r.state) for r in rows] == [("1", "READY")]
    else:
        assert [(r.version, r.state, r.reason) for r in rows] == [("1", "UNAVAILABLE", "unloaded")]


def test_a_model_folder_that_vanishes_before_loading(root, start_server, kit):
    running = start_server(root, model_control_mode="explicit")
    folder = kit.make_model(root, "gone")
    client = httpclient.InferenceServerClient(running.http_url)
    shutil.rmtree(folder)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("gone")
    assert "gone" in str(info.value)
    rows = running.core.repository_index()
    assert all(r.state != "READY" for r in rows)


def test_a_model_folder_that_vanishes_mid_load(root, start_server, kit, monkeypatch):
    from nereid.server import repository as repo_module

    running = start_server(root, model_control_mode="explicit")
    folder = kit.make_model(root, "gone")
    real = repo_module.prepare_config

    def prepare_then_vanish(*args, **kwargs):
        config = real(*args, **kwargs)
        shutil.rmtree(folder)  # after the config was read, before the versions are listed
        return config

    monkeypatch.setattr(repo_module, "prepare_config", prepare_then_vanish)
    with pytest.raises(InferenceServerException) as info:
        httpclient.InferenceServerClient(running.http_url).load_model("gone")
    assert "cannot read" in str(info.value)
    assert [(r.name, r.version, r.state) for r in running.core.repository_index()] == [
        ("gone", "", "UNAVAILABLE")
    ]
