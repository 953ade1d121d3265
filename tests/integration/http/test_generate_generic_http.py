"""Triton's generate extension on ordinary (non-LLM, non-decoupled) models: JSON keys become input tensors."""

from __future__ import annotations

import json

import httpx
import pytest


@pytest.fixture(scope="module")
def served(module_repo, start_module_server):
    module_repo.identity("ident_fp32", "FP32", max_batch_size=8)
    module_repo.identity("ident_bytes", "BYTES", max_batch_size=0, dims="[ 1 ]")
    running = start_module_server(module_repo.root)
    with httpx.Client(base_url=f"http://{running.http_url}", timeout=30) as client:
        yield client


def test_generate_maps_keys_to_inputs_and_outputs_to_keys(served):
    response = served.post(
        "/v2/models/ident_fp32/generate", json={"id": "7", "INPUT0": [1.5, 2.5], "parameters": {}}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "model_name": "ident_fp32",
        "model_version": "1",
        "id": "7",
        "OUTPUT0": [[1.5, 2.5]],
    }
    body = served.post("/v2/models/ident_bytes/versions/1/generate", json={"INPUT0": "héllo"}).json()
    assert body["OUTPUT0"] == "héllo"


def test_generate_stream_of_an_ordinary_model_is_one_event(served):
    response = served.post("/v2/models/ident_bytes/generate_stream", json={"INPUT0": "abc"})
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    assert response.text.startswith("data: ") and response.text.endswith("\n\n")
    assert json.loads(response.text[len("data: ") :])["OUTPUT0"] == "abc"


@pytest.mark.parametrize("path", ["generate", "generate_stream"])
def test_generate_errors_are_json_with_their_status(served, path):
    cases = [
        ("/v2/models/nope/", {"INPUT0": "x"}, 404, "unknown model"),
        ("/v2/models/ident_fp32/", {"INPUT0": ["a"]}, 400, "FP32"),
        ("/v2/models/ident_fp32/", {"OTHER": 1}, 400, "unexpected inference input 'OTHER'"),
        ("/v2/models/ident_fp32/", [1, 2], 400, "JSON object"),
        ("/v2/models/ident_fp32/", {"INPUT0": [1.0], "parameters": {"x": {"y": 1}}}, 400, "parameter 'x'"),
    ]
    for prefix, body, status, message in cases:
        response = served.post(prefix + path, json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"]
    assert served.get("/v2/models/ident_fp32/" + path).status_code == 405
