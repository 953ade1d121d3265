"""The classification extension over HTTP and gRPC, with real tritonclient."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL_REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
LABELS = ["setosa", "versicolor", "virginica"]
CLIENTS = {"http": (httpclient, "http_url"), "grpc": (grpcclient, "grpc_url")}
FEATURES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_module_server):
    root = tmp_path_factory.mktemp("models")
    for name in ("mlp_classifier", "string_identity"):
        shutil.copytree(MODEL_REPOSITORY / name, root / name)
    (root / "mlp_ensemble" / "1").mkdir(parents=True)
    (root / "mlp_ensemble" / "config.pbtxt").write_text(
        """
        platform: "ensemble"
        max_batch_size: 32
        input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] } ]
        ensemble_scheduling { step [ { model_name: "mlp_classifier" model_version: -1
          input_map { key: "features" value: "features" }
          output_map { key: "probabilities" value: "probabilities" } } ] }
        """
    )
    return start_module_server(root)


def _client(server, transport: str):
    module, attr = CLIENTS[transport]
    return module, module.InferenceServerClient(getattr(server, attr))


def _classify(server, transport: str, count: int):
    module, client = _client(server, transport)
    features = module.InferInput("features", list(FEATURES.shape), "FP32")
    features.set_data_from_numpy(FEATURES)
    outputs = [module.InferRequestedOutput("probabilities", class_count=count)]
    classes = client.infer("mlp_classifier", [features], outputs=outputs).as_numpy("probabilities")
    plain = client.infer("mlp_classifier", [features]).as_numpy("probabilities")
    return classes, plain


@pytest.mark.parametrize("transport", CLIENTS)
def test_top_n_classes_with_labels(server, transport: str) -> None:
    classes, plain = _classify(server, transport, 2)
    assert classes.shape == (2, 2)
    for row, probabilities in zip(classes, plain, strict=True):
        order = np.argsort(-probabilities)[:2]
        expected = [f"{probabilities[i]:f}:{i}:{LABELS[i]}" for i in order]
        assert [item.decode() for item in row] == expected


@pytest.mark.parametrize("transport", CLIENTS)
def test_more_classes_than_the_output_has_returns_them_all(server, transport: str) -> None:
    classes, _ = _classify(server, transport, 10)
    assert classes.shape == (2, 3)


def _http_post(server, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{body.pop('model')}/infer",
        json.dumps(body).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("count", [0, -1, 1.5, "2", True])
def test_bad_counts_are_400_naming_the_output_over_http(server, count) -> None:
    status, payload = _http_post(
        server,
        {
            "model": "mlp_classifier",
            "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": count}}],
        },
    )
    assert status == 400, payload
    assert "output 'probabilities'" in payload["error"] and "classification" in payload["error"]


@pytest.mark.parametrize("count", [-1, -5])
def test_bad_counts_are_invalid_argument_naming_the_output_over_grpc(server, count: int) -> None:
    with pytest.raises(InferenceServerException) as info:
        _classify(server, "grpc", count)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "output 'probabilities'" in str(info.value)


@pytest.mark.parametrize("transport", CLIENTS)
def test_bytes_outputs_cannot_be_classified(server, transport: str) -> None:
    module, client = _client(server, transport)
    tensor = module.InferInput("INPUT0", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"a"]], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            "string_identity", [tensor], outputs=[module.InferRequestedOutput("OUTPUT0", class_count=1)]
        )
    assert "unsupported type 'BYTES'" in str(info.value) and "OUTPUT0" in str(info.value)
    assert client.is_model_ready("mlp_classifier")


def test_a_missing_label_file_fails_the_load(tmp_path: Path, start_server) -> None:
    shutil.copytree(MODEL_REPOSITORY / "mlp_classifier", tmp_path / "mlp_classifier")
    (tmp_path / "mlp_classifier" / "labels.txt").unlink()
    running = start_server(tmp_path, model_control_mode="explicit")
    for module, attr in CLIENTS.values():
        with pytest.raises(InferenceServerException) as info:
            module.InferenceServerClient(getattr(running, attr)).load_model("mlp_classifier")
        assert "output[0].label_filename 'labels.txt'" in str(info.value)


def test_json_clients_get_the_classes_as_strings(server) -> None:
    status, payload = _http_post(
        server,
        {
            "model": "mlp_classifier",
            "inputs": [
                {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": FEATURES[0].tolist()}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
        },
    )
    assert status == 200, payload
    (output,) = payload["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 1]
    value, index, label = output["data"][0].split(":")
    assert LABELS[int(index)] == label and 0.0 < float(value) <= 1.0


@pytest.mark.parametrize("transport", CLIENTS)
def test_ensembles_refuse_classification_instead_of_ignoring_it(server, transport: str) -> None:
    module, client = _client(server, transport)
    features = module.InferInput("features", list(FEATURES.shape), "FP32")
    features.set_data_from_numpy(FEATURES)
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            "mlp_ensemble", [features], outputs=[module.InferRequestedOutput("probabilities", class_count=1)]
        )
    assert "classification is not supported on ensemble model 'mlp_ensemble'" in str(info.value)
    assert client.infer("mlp_ensemble", [features]).as_numpy("probabilities").shape == (2, 3)
