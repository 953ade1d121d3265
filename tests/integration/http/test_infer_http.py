"""Inference over HTTP through NVIDIA's tritonclient: every datatype, binary and JSON."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.server.datatypes import NUMPY_DTYPES

NUMERIC = [name for name in NUMPY_DTYPES if name not in ("BF16", "BYTES")]


@pytest.fixture(scope="module")
def typed_server(module_repo, start_module_server):
    for datatype in [*NUMERIC, "BYTES"]:
        module_repo.identity(f"id_{datatype.lower()}", datatype)
    module_repo.echo("echo", {"IN": "BF16", "RAW": "BYTES"})
    module_repo.add_sub()
    return start_module_server(module_repo.root)


def infer(client, model, arrays, datatypes, binary=True, outputs=None, **kwargs):
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in (outputs or [])] or None
    return client.infer(model, inputs, outputs=requested, **kwargs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_round_trips(typed_server, sample, datatype, binary):
    client = httpclient.InferenceServerClient(typed_server.http_url)
    data = sample(datatype, (3, 5))
    model = f"id_{datatype.lower()}"
    if datatype == "FP16" and not binary:
        with pytest.raises(InferenceServerException, match="FP16 data via JSON is not supported"):
            infer(client, model, {"INPUT0": data}, {"INPUT0": datatype}, binary=False)
        return
    result = infer(client, model, {"INPUT0": data}, {"INPUT0": datatype}, binary=binary)
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_keep_embedded_nuls_and_unicode(typed_server, binary):
    client = httpclient.InferenceServerClient(typed_server.http_url)
    data = np.array([[b"a\x00b", "héllo ✓".encode()], [b"", b"\x00\x00"]], dtype=object)
    result = infer(client, "id_bytes", {"INPUT0": data}, {"INPUT0": "BYTES"}, binary=binary)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_non_utf8_bytes_are_kept_exactly_in_binary(typed_server):
    client = httpclient.InferenceServerClient(typed_server.http_url)
    raw = np.array([b"\xff\xfe\x00\x80", b"ok"], dtype=object)
    bf16 = np.array([0x3F80, 0xC000], dtype=np.uint16)  # 1.0 and -2.0 as bfloat16 bits
    inputs = [httpclient.InferInput("RAW", [2], "BYTES"), httpclient.InferInput("IN", [2], "BF16")]
    inputs[0].set_data_from_numpy(raw, binary_data=True)
    inputs[1].set_data_from_numpy(np.array([1.0, -2.0], dtype=np.float32), binary_data=True)
    result = client.infer("echo", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUT_RAW"), raw)
    body = result.get_output("OUT_IN")
    assert body["datatype"] == "BF16" and body["parameters"]["binary_data_size"] == 4
    del bf16


def test_add_sub_matches_onnxruntime_and_honours_output_subset(typed_server, module_repo, rng):
    client = httpclient.InferenceServerClient(typed_server.http_url)
    a = rng.standard_normal((4, 16)).astype(np.float32)
    b = rng.standard_normal((4, 16)).astype(np.float32)
    session = ort.InferenceSession(str(module_repo.root / "add_sub" / "1" / "model.onnx"))
    expected = session.run(None, {"INPUT0": a, "INPUT1": b})
    dtypes = {"INPUT0": "FP32", "INPUT1": "FP32"}
    for binary in (True, False):
        full = infer(client, "add_sub", {"INPUT0": a, "INPUT1": b}, dtypes, binary=binary)
        np.testing.assert_array_equal(full.as_numpy("OUTPUT0"), expected[0])
        np.testing.assert_array_equal(full.as_numpy("OUTPUT1"), expected[1])
        subset = infer(
            client,
            "add_sub",
            {"INPUT0": a, "INPUT1": b},
            dtypes,
            binary=binary,
            outputs=["OUTPUT1"],
            request_id="req-7",
        )
        assert subset.as_numpy("OUTPUT0") is None
        np.testing.assert_array_equal(subset.as_numpy("OUTPUT1"), expected[1])
        assert subset.get_response()["id"] == "req-7"


def test_request_parameters_are_accepted(typed_server, rng):
    client = httpclient.InferenceServerClient(typed_server.http_url)
    a = rng.standard_normal((1, 16)).astype(np.float32)
    result = infer(
        client,
        "add_sub",
        {"INPUT0": a, "INPUT1": a},
        {"INPUT0": "FP32", "INPUT1": "FP32"},
        parameters={"custom": "x", "flag": True},
        priority=0,
        timeout=1_000_000,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def test_versions_route_to_the_named_version(repo, start_server, rng):
    repo.add_sub("scaled", versions=(1, 2, 3), extra="version_policy: { specific: { versions: [1, 3] } }")
    running = start_server(repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    a = rng.standard_normal((1, 16)).astype(np.float32)
    arrays, dtypes = {"INPUT0": a, "INPUT1": a}, {"INPUT0": "FP32", "INPUT1": "FP32"}
    np.testing.assert_allclose(
        infer(client, "scaled", arrays, dtypes, model_version="1").as_numpy("OUTPUT0"), 2 * a
    )
    np.testing.assert_allclose(
        infer(client, "scaled", arrays, dtypes, model_version="3").as_numpy("OUTPUT0"), 6 * a
    )
    np.testing.assert_allclose(infer(client, "scaled", arrays, dtypes).as_numpy("OUTPUT0"), 6 * a)
    with pytest.raises(InferenceServerException, match="version 2 is not found"):
        infer(client, "scaled", arrays, dtypes, model_version="2")
    assert client.get_model_metadata("scaled")["versions"] == ["1", "3"]
    assert not client.is_model_ready("scaled", "2")
    assert client.is_model_ready("scaled", "3")
