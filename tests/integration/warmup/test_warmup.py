"""model_warmup over both load APIs: samples run on every instance before READY, failures fail the load.

The Python model records each ``execute`` call (rows, inputs, and what the server's readiness
endpoint answered at that moment) to ``calls.jsonl`` in its folder.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.server.datatypes import serialize_bytes_tensor

RECORDER = """
import json
import os
import urllib.error
import urllib.request

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.ready_url = config["parameters"]["ready_url"]["string_value"]
        self.log = os.path.join(args["model_repository"], "calls.jsonl")

    def execute(self, requests):
        try:
            ready = urllib.request.urlopen(self.ready_url, timeout=10).status
        except urllib.error.HTTPError as exc:
            ready = exc.code
        rows, responses = [], []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            rows.append({"shape": list(x.shape), "values": x.ravel().tolist(),
                         "text": [t.decode() for t in text.ravel()]})
            if (x == 7).any():
                error = pb_utils.TritonError("sevens are refused")
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)]))
        with open(self.log, "a") as f:
            f.write(json.dumps({"ready": ready, "rows": rows}) + "\\n")
        return responses
"""

CONFIG = """
backend: "python"
max_batch_size: 4
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
parameters {{ key: "ready_url" value: {{ string_value: "{ready_url}" }} }}
model_warmup [ {samples} ]
"""


def sample(name: str, data: str, text: str = "zero_data: true", batch: int = 1, count: int = 0) -> str:
    return (
        f'{{ name: "{name}" batch_size: {batch} count: {count} inputs [ '
        f'{{ key: "INPUT0" value: {{ data_type: TYPE_FP32 dims: [ 4 ] {data} }} }}, '
        f'{{ key: "TEXT" value: {{ data_type: TYPE_STRING dims: [ 1 ] {text} }} }} ] }}'
    )


SAMPLES = ", ".join(
    [
        sample("zeros", "zero_data: true", batch=2, count=2),
        sample("random", "random_data: true", "random_data: true"),
        sample("file", 'input_data_file: "input0.bin"', 'input_data_file: "text.bin"'),
    ]
)


def write_model(root: Path, name: str, http_url: str, samples: str) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "warmup").mkdir(exist_ok=True)
    (folder / "1" / "model.py").write_text(textwrap.dedent(RECORDER))
    ready_url = f"http://{http_url}/v2/models/{name}/ready"
    (folder / "config.pbtxt").write_text(CONFIG.format(ready_url=ready_url, samples=samples))
    (folder / "warmup" / "input0.bin").write_bytes(np.arange(1, 5, dtype="<f4").tobytes())
    (folder / "warmup" / "text.bin").write_bytes(serialize_bytes_tensor(np.array([b"hello"], dtype=object)))
    (folder / "warmup" / "sevens.bin").write_bytes(np.full(4, 7, dtype="<f4").tobytes())
    return folder


def calls(folder: Path) -> list[dict]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def client_for(running, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(running.http_url)
    return grpcclient, grpcclient.InferenceServerClient(running.grpc_url)


def load_error(client, name: str) -> tuple[str, str]:
    """(status, message) of a load that must fail (read here: a kept traceback would hold the client)."""
    try:
        client.load_model(name)
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode."), exc.message()
    raise AssertionError(f"loading '{name}' did not fail")


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    return start_module_server(module_repo.root, model_control_mode="explicit")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_sample_runs_count_times_on_every_instance_before_ready(server, module_repo, protocol):
    name = f"warm_{protocol}"
    folder = write_model(module_repo.root, name, server.http_url, SAMPLES)
    module, client = client_for(server, protocol)
    client.load_model(name)
    warmup = calls(folder)
    # Per instance: "zeros" twice (two one-row requests each call), "random" once, "file" once.
    assert len(warmup) == 2 * 4
    assert all(call["ready"] != 200 for call in warmup), "a warmup request ran after READY"
    for instance in (warmup[:4], warmup[4:]):
        zeros, zeros_again, random, from_file = instance
        for call in (zeros, zeros_again):
            assert call["rows"] == [{"shape": [1, 4], "values": [0.0] * 4, "text": [""]}] * 2
        assert len(random["rows"]) == 1 and random["rows"][0]["shape"] == [1, 4]
        assert random["rows"][0]["values"] != [0.0] * 4 and random["rows"][0]["text"] == [""]
        assert from_file["rows"] == [{"shape": [1, 4], "values": [1.0, 2.0, 3.0, 4.0], "text": ["hello"]}]
    assert client.is_model_ready(name)
    data = np.ones((1, 4), dtype=np.float32)
    inputs = [module.InferInput("INPUT0", [1, 4], "FP32"), module.InferInput("TEXT", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(data)
    inputs[1].set_data_from_numpy(np.array([[b"x"]], dtype=object))
    np.testing.assert_array_equal(client.infer(name, inputs).as_numpy("OUTPUT0"), data * 2)
    assert calls(folder)[-1]["ready"] == 200
    client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("case", "samples", "expected"),
    [
        (
            "fails",
            sample("sevens", 'input_data_file: "sevens.bin"'),
            ["failed to run warmup sample 'sevens'", "sevens are refused"],
        ),
        (
            "missing",
            sample("nofile", 'input_data_file: "missing.bin"'),
            ["warmup sample 'nofile' input 'INPUT0'", "warmup/missing.bin"],
        ),
        (
            "short",
            sample("short", 'input_data_file: "text.bin"'),
            ["warmup sample 'short' input 'INPUT0'", "expects 16 bytes", "only has 9 bytes"],
        ),
    ],
)
def test_a_failing_sample_fails_the_load(server, module_repo, protocol, case, samples, expected):
    name = f"bad_{case}_{protocol}"
    write_model(module_repo.root, name, server.http_url, samples)
    _, client = client_for(server, protocol)
    status, message = load_error(client, name)
    # Triton answers a failed load with INVALID_ARG: the repository's to fix, not a 503 to retry.
    assert status == {"http": "400", "grpc": "INVALID_ARGUMENT"}[protocol]
    for text in [f"model '{name}' version 1", *expected]:
        assert text in message
    assert not client.is_model_ready(name)
    index = client.get_model_repository_index()
    entries = (
        index
        if protocol == "http"
        else [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models
        ]
    )
    entry = next(e for e in entries if e["name"] == name)
    assert entry["state"] == "UNAVAILABLE"
    assert expected[0] in entry["reason"]
    # The server keeps serving: a good model still loads.
    good = f"good_after_{case}_{protocol}"
    write_model(module_repo.root, good, server.http_url, sample("z", "zero_data: true"))
    client.load_model(good)
    assert client.is_model_ready(good)
    client.close()
