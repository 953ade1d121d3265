"""Malformed requests over raw HTTP: each gets a 4xx with {"error": ...}, and nothing changes."""

from __future__ import annotations

import http.client
import json
import struct

import numpy as np
import pytest


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    module_repo.add_sub()
    module_repo.identity("id_uint8", "UINT8")
    return start_module_server(module_repo.root, http_max_input_size=1024 * 1024)


def post(server, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, (json.loads(payload) if payload else {})


def get(server, path: str) -> tuple[int, bytes]:
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def add_sub_json(**overrides) -> dict:
    tensor = {"shape": [1, 16], "datatype": "FP32", "data": list(range(16))}
    body = {"inputs": [{"name": "INPUT0", **tensor}, {"name": "INPUT1", **tensor}]}
    body.update(overrides)
    return body


def stats(server) -> dict:
    status, payload = get(server, "/v2/models/add_sub/stats")
    assert status == 200
    entry = json.loads(payload)["model_stats"][0]
    return {"success": entry["inference_stats"]["success"]["count"], "executions": entry["execution_count"]}


def assert_still_serving(server) -> None:
    status, payload = post(server, "/v2/models/add_sub/infer", json.dumps(add_sub_json()).encode())
    assert status == 200, payload
    assert payload["outputs"][0]["data"] == [2.0 * i for i in range(16)]


def input_with(**fields) -> dict:
    base = {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))}
    base.update(fields)
    return base


SECOND = {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))}

CASES = {
    "malformed json": (b'{"inputs": [', 400, "failed to parse"),
    "not an object": (b"[1, 2]", 400, "must be a JSON object"),
    "no inputs": (b"{}", 400, "non-empty 'inputs'"),
    "wrong datatype": ({"inputs": [input_with(datatype="INT32"), SECOND]}, 400, "expects 'FP32'"),
    "unknown datatype": ({"inputs": [input_with(datatype="FLOAT"), SECOND]}, 400, "unknown datatype"),
    "string in fp32": (
        {"inputs": [input_with(data=["a"] * 16), SECOND]},
        400,
        "does not match datatype FP32",
    ),
    "numeric string in fp32": ({"inputs": [input_with(data=["1"] * 16), SECOND]}, 400, "does not match"),
    "element count": (
        {"inputs": [input_with(data=list(range(15))), SECOND]},
        400,
        "unexpected number of elements",
    ),
    "negative dim": ({"inputs": [input_with(shape=[-1, 16]), SECOND]}, 400, "non-negative integers"),
    "absurd dims": (
        {"inputs": [input_with(shape=[1_000_000_000, 1_000_000_000]), SECOND]},
        400,
        "unexpected number",
    ),
    "float dims": ({"inputs": [input_with(shape=[1e9, 1e9]), SECOND]}, 400, "non-negative integers"),
    "wrong shape": ({"inputs": [input_with(shape=[2, 8]), SECOND]}, 400, "unexpected shape"),
    "batch too large": (
        {
            "inputs": [
                input_with(shape=[9, 16], data=[0.0] * 144),
                dict(SECOND, shape=[9, 16], data=[0.0] * 144),
            ]
        },
        400,
        "batch-size must be <= 8",
    ),
    "missing input": ({"inputs": [input_with()]}, 400, "missing required input"),
    "unknown input": (
        {"inputs": [input_with(), SECOND, input_with(name="EXTRA")]},
        400,
        "unexpected inference input",
    ),
    "duplicate input": ({"inputs": [input_with(), input_with(), SECOND]}, 400, "more than once"),
    "unknown output": ({**add_sub_json(), "outputs": [{"name": "NOPE"}]}, 400, "unexpected inference output"),
    "bad parameters": ({**add_sub_json(), "parameters": {"x": {"nested": 1}}}, 400, "must be a boolean"),
    "priority not int": (
        {**add_sub_json(), "parameters": {"priority": "high"}},
        400,
        "'priority' must be an integer",
    ),
    "negative timeout": ({**add_sub_json(), "parameters": {"timeout": -5}}, 400, "'timeout' must be in"),
    "huge timeout": ({**add_sub_json(), "parameters": {"timeout": 2**62}}, 400, "'timeout' must be in"),
    "negative priority": ({**add_sub_json(), "parameters": {"priority": -1}}, 400, "'priority' must be in"),
    "id not string": ({**add_sub_json(), "id": 5}, 400, "'id' must be a string"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_infer_is_rejected_and_changes_nothing(server, case):
    body, status, message = CASES[case]
    before = stats(server)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, payload = post(server, "/v2/models/add_sub/infer", raw)
    assert got == status, payload
    assert message in payload["error"]
    assert stats(server) == before
    assert_still_serving(server)


def test_json_values_must_fit_the_datatype(server):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "UINT8", "data": [1, 300]}]}
    status, payload = post(server, "/v2/models/id_uint8/infer", json.dumps(body).encode())
    assert status == 400 and "out of range for UINT8" in payload["error"]
    body["inputs"][0]["data"] = [1, -1]
    status, payload = post(server, "/v2/models/id_uint8/infer", json.dumps(body).encode())
    assert status == 400 and "out of range" in payload["error"]
    body["inputs"][0]["data"] = [1, 2.5]
    status, payload = post(server, "/v2/models/id_uint8/infer", json.dumps(body).encode())
    assert status == 400 and "does not match datatype UINT8" in payload["error"]


def test_deep_json_is_rejected(server):
    deep = b'{"inputs": [{"name": "INPUT0", "parameters": ' + b'{"a": ' * 120 + b"1" + b"}" * 120 + b"}]}"
    status, payload = post(server, "/v2/models/add_sub/infer", deep)
    assert status == 400 and "deeper than 100" in payload["error"]
    assert_still_serving(server)


def binary_request(header: dict, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def test_binary_header_length_beyond_body(server):
    body, headers = binary_request(add_sub_json(), [])
    headers["Inference-Header-Content-Length"] = str(len(body) + 10)
    status, payload = post(server, "/v2/models/add_sub/infer", body, headers)
    assert status == 400 and "outside the body" in payload["error"]
    headers["Inference-Header-Content-Length"] = "abc"
    status, payload = post(server, "/v2/models/add_sub/infer", body, headers)
    assert status == 400 and "non-negative integer" in payload["error"]
    assert_still_serving(server)


@pytest.mark.parametrize("claimed,sent", [(64, 60), (60, 64), (64, 128)])
def test_binary_data_size_mismatch(server, claimed, sent):
    blob = np.zeros(16, dtype=np.float32).tobytes()
    header = {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [1, 16],
                "datatype": "FP32",
                "parameters": {"binary_data_size": claimed},
            },
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))},
        ]
    }
    body, headers = binary_request(header, [(blob * 2)[:sent]])
    status, payload = post(server, "/v2/models/add_sub/infer", body, headers)
    assert status == 400, payload
    wording = "input byte size mismatch for input 'INPUT0' for model 'add_sub'. Expected 64, got 60"
    assert "binary" in payload["error"] or wording in payload["error"]
    assert_still_serving(server)


def test_bytes_length_prefix_running_past_the_end(server, module_repo):
    blob = struct.pack("<I", 100) + b"abc"
    header = {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    body, headers = binary_request(header, [blob])
    status, payload = post(server, "/v2/models/add_sub/infer", body, headers)
    assert status == 400 and "runs past the end" in payload["error"]


def test_body_over_the_input_size_limit(server):
    big = b'{"inputs": [], "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, payload = post(server, "/v2/models/add_sub/infer", big)
    assert status == 413 and "exceeds the limit" in payload["error"]
    assert_still_serving(server)


def test_gzip_bombs_are_capped(server):
    import gzip

    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    status, payload = post(server, "/v2/models/add_sub/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "decompressed" in payload["error"]
    ok = gzip.compress(json.dumps(add_sub_json()).encode())
    status, payload = post(server, "/v2/models/add_sub/infer", ok, {"Content-Encoding": "gzip"})
    assert status == 200


@pytest.mark.parametrize(
    "path,status",
    [
        ("/v2/models/nope/infer", 404),
        ("/v2/models/add_sub/versions/7/infer", 404),
        ("/v2/models/add_sub/versions/x1/infer", 400),
        ("/v2/models/..%2F..%2Fetc/infer", 400),
        ("/v2/models/a%2Fb/infer", 400),
        ("/v2/models/../infer", 400),
    ],
)
def test_unknown_or_unsafe_model_names(server, path, status):
    got, payload = post(server, path, json.dumps(add_sub_json()).encode())
    assert got == status, payload
    assert payload["error"]
    assert_still_serving(server)


def test_wrong_method_and_unknown_route(server):
    assert get(server, "/v2/models/add_sub/infer")[0] == 405
    status, body = get(server, "/v2/nothing/here")
    assert status == 404 and json.loads(body)["error"]
