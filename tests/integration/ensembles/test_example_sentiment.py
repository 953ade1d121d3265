"""The example repository's `sentiment` ensemble, served as `make serve` serves it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

MODEL_REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
MODELS = ("sentiment", "text_features", "sentiment_en", "sentiment_multi", "sentiment_labels")


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_module_server):
    root = tmp_path_factory.mktemp("models")
    for name in MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return start_module_server(root, model_control_mode="explicit", load_model=["sentiment"])


def classify(server, transport: str, text: str) -> tuple[str, str, float]:
    lib = httpclient if transport == "http" else grpcclient
    client = lib.InferenceServerClient(server.http_url if transport == "http" else server.grpc_url)
    item = lib.InferInput("TEXT", [1, 1], "BYTES")
    item.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    result = client.infer("sentiment", [item])
    return (
        result.as_numpy("LABEL")[0, 0].decode(),
        result.as_numpy("LANG")[0, 0].decode(),
        float(result.as_numpy("SCORE")[0, 0]),
    )


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sentiment_routes_by_language(server, transport):
    assert classify(server, transport, "This movie was GREAT, I love it")[:2] == ("positive", "en")
    assert classify(server, transport, "the food was awful and the service terrible")[:2] == (
        "negative",
        "en",
    )
    assert classify(server, transport, "La película es muy buena, ¡me encanta!")[:2] == ("positive", "es")
    assert classify(server, transport, "El servicio fue pésimo y la comida un horrible desastre")[:2] == (
        "negative",
        "es",
    )
    assert classify(server, transport, "it is a chair")[:2] == ("neutral", "en")


def test_only_the_chosen_classifier_runs(server):
    client = httpclient.InferenceServerClient(server.http_url)

    def count(model: str) -> int:
        return client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]["success"]["count"]

    before = count("sentiment_en"), count("sentiment_multi")
    classify(server, "http", "Qué día tan bueno y genial")
    assert (count("sentiment_en"), count("sentiment_multi")) == (before[0], before[1] + 1)


def test_committed_classifiers_equal_a_fresh_build():
    spec = importlib.util.spec_from_file_location("build_sentiment", MODEL_REPOSITORY / "build_sentiment.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for rel, data in module.build_files().items():
        assert (MODEL_REPOSITORY / rel).read_bytes() == data, (
            f"rerun model_repository/build_sentiment.py ({rel})"
        )
