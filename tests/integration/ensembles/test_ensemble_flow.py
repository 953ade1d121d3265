"""Conditional steps, decoupled last steps, lifecycle, nesting, timeouts and BLS into an ensemble."""

from __future__ import annotations

import json
import queue
import textwrap
import time
from functools import partial

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

TRANSPORTS = ["http", "grpc"]


def infer(server, transport, model, inputs: dict[str, np.ndarray], **kw):
    lib = httpclient if transport == "http" else grpcclient
    c = lib.InferenceServerClient(server.http_url if transport == "http" else server.grpc_url)
    items = []
    for name, array in inputs.items():
        dtype = {"f": "FP32", "O": "BYTES", "b": "BOOL"}[array.dtype.kind]
        item = lib.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        items.append(item)
    return c.infer(model, items, **kw)


@pytest.fixture
def routed(ens, repo, start_server):
    """IN -> route on LANG: en -> add1, fr -> add10, otherwise -> add100; BIG guard -> add1000."""
    ens.step("add1", amount=1)
    ens.step("add10", amount=10)
    ens.step("add100", amount=100)
    ens.step("positive", op="positive", out_type="TYPE_BOOL")
    ens.step("add1000", amount=1000)
    io = ens.io({"IN": "", "LANG": "TYPE_STRING"}, {"OUT": "", "EXTRA": ""}).replace(
        'name: "LANG" data_type: TYPE_STRING dims: [ -1 ]', 'name: "LANG" data_type: TYPE_STRING dims: [ 1 ]'
    )
    ens.ensemble(
        "routed",
        ens.config(
            io,
            ens.entry(
                "add1", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, when='when { tensor: "LANG" equals: ["en"] }'
            ),
            ens.entry(
                "add10", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, when='when { tensor: "LANG" equals: "fr" }'
            ),
            ens.entry(
                "add100", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, when='when { tensor: "LANG" otherwise: true }'
            ),
            ens.entry("positive", {"INPUT0": "IN"}, {"OUTPUT0": "IS_POS"}),
            ens.entry("add1000", {"INPUT0": "OUT"}, {"OUTPUT0": "EXTRA"}, when='when { tensor: "IS_POS" }'),
        ),
    )
    return start_server(repo.root)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_route_picks_one_branch_and_guard_skips(routed, calls, transport):
    cases = [("en", 1.0, 2.0, "add1"), ("fr", 1.0, 11.0, "add10"), ("de", 1.0, 101.0, "add100")]
    for lang, x, want, model in cases:
        calls.clear()
        result = infer(
            routed,
            transport,
            "routed",
            {"IN": np.array([x], np.float32), "LANG": np.array([lang.encode()], object)},
        )
        assert result.as_numpy("OUT")[0] == want
        assert result.as_numpy("EXTRA")[0] == want + 1000
        assert sorted(calls.models()) == sorted([model, "positive", "add1000"])
    calls.clear()
    result = infer(
        routed, transport, "routed", {"IN": np.array([-5], np.float32), "LANG": np.array([b"en"], object)}
    )
    assert result.as_numpy("OUT")[0] == -4
    assert result.as_numpy("EXTRA") is None  # the guard was false: the step did not run
    assert "add1000" not in calls.models()


def test_skipped_steps_are_counted(routed):
    infer(routed, "http", "routed", {"IN": np.array([1], np.float32), "LANG": np.array([b"en"], object)})
    stats = httpclient.InferenceServerClient(routed.http_url).get_inference_statistics("routed")
    steps = stats["model_stats"][0]["composing_models"]
    assert [s["skipped"] for s in steps] == [0, 1, 1, 0, 0]


@pytest.fixture
def streaming(ens, repo, start_server):
    """IN -> add1 -> repeat (decoupled, 3 responses) -> add100 -> OUT."""
    ens.step("add1", amount=1)
    ens.step("repeat", op="repeat", params={"count": "3"})
    ens.step("add100", amount=100)
    ens.ensemble(
        "streamed",
        ens.config(
            ens.io({"IN": ""}, {"OUT": ""}),
            ens.entry("add1", {"INPUT0": "IN"}, {"OUTPUT0": "A"}),
            ens.entry("repeat", {"INPUT0": "A"}, {"OUTPUT0": "B"}),
            ens.entry("add100", {"INPUT0": "B"}, {"OUTPUT0": "OUT"}),
        ),
    )
    return start_server(repo.root)


def test_decoupled_step_streams_over_grpc(streaming):
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(streaming.grpc_url)
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
    item = grpcclient.InferInput("IN", [1], "FP32")
    item.set_data_from_numpy(np.array([1], np.float32))
    client.async_stream_infer("streamed", [item], enable_empty_final_response=True)
    values = []
    while True:
        result, error = results.get(timeout=10)
        assert error is None, error
        response = result.get_response()
        if response.parameters["triton_final_response"].bool_param and not response.outputs:
            break
        values.append(float(result.as_numpy("OUT")[0]))
    client.stop_stream()
    assert values == [102.0, 103.0, 104.0]


def test_decoupled_step_streams_over_http_generate(streaming):
    with httpx.Client(base_url=f"http://{streaming.http_url}", timeout=10) as http:
        response = http.post("/v2/models/streamed/generate_stream", json={"IN": [1.0]})
        events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert [e["OUT"] for e in events] == [102.0, 103.0, 104.0]
    with pytest.raises(InferenceServerException, match="decoupled"):
        infer(streaming, "http", "streamed", {"IN": np.array([1], np.float32)})


def test_explicit_mode_loads_steps_and_tracks_readiness(ens, repo, start_server):
    ens.step("add1", amount=1)
    ens.ensemble(
        "inner",
        ens.config(ens.io({"IN": ""}, {"OUT": ""}), ens.entry("add1", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})),
    )
    ens.ensemble(
        "outer",
        ens.config(
            ens.io({"IN": ""}, {"OUT": ""}),
            ens.entry("inner", {"IN": "IN"}, {"OUT": "X"}),
            ens.entry("add1", {"INPUT0": "X"}, {"OUTPUT0": "OUT"}, version=1),
        ),
    )
    server = start_server(repo.root, model_control_mode="explicit", load_model=["outer"])
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready("outer") and client.is_model_ready("inner") and client.is_model_ready("add1")
    result = infer(server, "http", "outer", {"IN": np.array([1], np.float32)})
    assert result.as_numpy("OUT")[0] == 3
    client.unload_model("add1")
    assert not client.is_model_ready("outer") and not client.is_model_ready("inner")
    rows = {r["name"]: r for r in client.get_model_repository_index()}
    assert rows["outer"]["state"] == "UNAVAILABLE" and "'inner'" in rows["outer"]["reason"]
    assert rows["inner"]["state"] == "UNAVAILABLE" and "'add1'" in rows["inner"]["reason"]
    with pytest.raises(InferenceServerException, match="not ready"):
        infer(server, "http", "outer", {"IN": np.array([1], np.float32)})
    client.load_model("add1")
    assert client.is_model_ready("outer")
    assert infer(server, "http", "outer", {"IN": np.array([1], np.float32)}).as_numpy("OUT")[0] == 3


def test_cyclic_ensembles_fail_to_load(ens, repo, start_server):
    ens.ensemble(
        "ping", ens.config(ens.io({"IN": ""}, {"OUT": ""}), ens.entry("pong", {"IN": "IN"}, {"OUT": "OUT"}))
    )
    ens.ensemble(
        "pong", ens.config(ens.io({"IN": ""}, {"OUT": ""}), ens.entry("ping", {"IN": "IN"}, {"OUT": "OUT"}))
    )
    server = start_server(repo.root, exit_on_error=False)
    rows = {
        r["name"]: r for r in httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    }
    assert "include each other" in rows["ping"]["reason"] + rows["pong"]["reason"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_timeout_cancels_steps_not_started(ens, repo, start_server, calls, transport):
    ens.step("slow", amount=1, sleep_ms=300)
    ens.step("after", amount=1)
    ens.ensemble(
        "timed",
        ens.config(
            ens.io({"IN": ""}, {"OUT": ""}),
            ens.entry("slow", {"INPUT0": "IN"}, {"OUTPUT0": "X"}),
            ens.entry("after", {"INPUT0": "X"}, {"OUTPUT0": "OUT"}),
        ),
    )
    server = start_server(repo.root)
    with pytest.raises(InferenceServerException, match="timeout"):
        infer(server, transport, "timed", {"IN": np.array([1], np.float32)}, timeout=100_000)
    assert "after" not in calls.models()


def test_priority_and_parameters_reach_steps(ens, repo, start_server):
    ens.step(
        "prio",
        amount=1,
        max_batch_size=4,
        extra="dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
    )
    step = ens.entry("prio", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})
    ens.ensemble("p", ens.config(ens.io({"IN": ""}, {"OUT": ""}), step, max_batch_size=4))
    server = start_server(repo.root)
    x = np.array([[1]], np.float32)
    # priority 3 is outside the step's levels: the step's queue rejects it, so it reached the step
    with pytest.raises(InferenceServerException, match="priority 3"):
        infer(server, "http", "p", {"IN": x}, priority=3)
    assert infer(server, "http", "p", {"IN": x}, priority=1).as_numpy("OUT")[0, 0] == 2


BLS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            call = pb_utils.InferenceRequest(
                model_name="pair", requested_output_names=["OUT"], inputs=[pb_utils.Tensor("IN", x.as_numpy())]
            )
            reply = call.exec()
            if reply.has_error():
                raise pb_utils.TritonModelException(reply.error().message())
            out = pb_utils.get_output_tensor_by_name(reply, "OUT").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out * 2)]))
        return responses
"""


def test_python_model_calls_ensemble_through_bls(ens, repo, start_server):
    ens.step("add1", amount=1)
    ens.step("add10", amount=10)
    ens.ensemble(
        "pair",
        ens.config(
            ens.io({"IN": ""}, {"OUT": ""}),
            ens.entry("add1", {"INPUT0": "IN"}, {"OUTPUT0": "X"}),
            ens.entry("add10", {"INPUT0": "X"}, {"OUTPUT0": "OUT"}),
        ),
    )
    folder = repo.config(
        "caller",
        """backend: "python"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU } ]""",
    )
    (folder / "1" / "model.py").write_text(textwrap.dedent(BLS_MODEL))
    server = start_server(repo.root)
    result = infer(server, "grpc", "caller", {"INPUT0": np.array([1, 2], np.float32)})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [24, 26])


def test_failure_releases_and_leaves_others_running(ens, repo, start_server):
    ens.step("slowok", amount=1, sleep_ms=200, count=2)
    ens.step("bad", op="fail")
    ens.ensemble(
        "mixed",
        ens.config(
            ens.io({"IN": ""}, {"A": "", "B": ""}),
            ens.entry("slowok", {"INPUT0": "IN"}, {"OUTPUT0": "A"}),
            ens.entry("bad", {"INPUT0": "IN"}, {"OUTPUT0": "B"}),
        ),
    )
    ens.ensemble(
        "good",
        ens.config(
            ens.io({"IN": ""}, {"OUT": ""}), ens.entry("slowok", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})
        ),
    )
    server = start_server(repo.root)
    client = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    item = httpclient.InferInput("IN", [1], "FP32")
    item.set_data_from_numpy(np.array([1], np.float32))
    pending = client.async_infer("good", [item])
    start = time.perf_counter()
    with pytest.raises(InferenceServerException, match="step 1 \\('bad'\\) failed: boom from bad"):
        client.infer("mixed", [item])
    assert time.perf_counter() - start < 0.15  # it did not wait for the slow branch
    assert pending.get_result().as_numpy("OUT")[0] == 2
