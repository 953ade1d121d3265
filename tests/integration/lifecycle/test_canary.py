"""Canary over real servers: a failing or disagreeing candidate rolls back within one window."""

from __future__ import annotations

import json
import time
import urllib.request

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from nereid.proto import grpc_service_pb2 as pb
from nereid.proto import grpc_service_pb2_grpc

WINDOW = 0.5


def _canary(extra: str = "") -> str:
    return (
        "canary: {stable: 1, candidate: 2, steps: [50, 100], "
        f"window_s: {WINDOW}, min_requests: 5, max_error_rate: 0.05, max_p99_ratio: 100{extra}}}"
    )


def _state(running) -> dict:
    url = f"http://{running.http_url}/v2/repository/models/m/routing"
    with urllib.request.urlopen(url) as reply:
        return json.loads(reply.read())


def _send(client, data, seconds: float) -> int:
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    errors, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.infer("m", [tensor])
        except Exception:
            errors += 1
    return errors


def test_an_erroring_candidate_is_rolled_back_within_one_window(root, start_server, kit):
    kit.make_model(
        root,
        "m",
        (1, 2),
        "version_policy: { all { } }\n" + kit.routing_param(_canary()),
        markers={2: "errors"},
    )
    running = start_server(root)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    assert _state(running)["canary"]["share"] == 50.0
    _send(client, kit.ones(), WINDOW * 1.5)  # one window and a half of traffic
    assert _state(running)["canary"]["status"] == "rolled_back"
    state = _state(running)
    assert state["shares"] == {"1": 100.0, "2": 0.0}
    decision = state["canary"]["decisions"][-1]
    assert decision["action"] == "rollback" and decision["numbers"]["error_rate"] > 0.05
    assert _send(client, kit.ones(), 0.3) == 0  # all traffic on the stable version now
    # The state is visible over gRPC too (index reasons) and in metrics.
    with grpc.insecure_channel(running.grpc_url) as channel:
        index = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest()
        )
    reasons = {row.version: row.reason for row in index.models}
    assert "traffic 0%" in reasons["2"] and "rolled_back" in reasons["2"]
    with urllib.request.urlopen(running.metrics_url) as reply:
        text = reply.read().decode()
    assert 'nereid_canary_share{candidate="2",model="m",status="rolled_back"} 0.0' in text


def test_a_disagreeing_shadow_candidate_is_rolled_back(root, start_server, kit):
    folder = kit.make_model(root, "m", (1,), "")
    kit.add_version(folder, 2, factor=1.5)  # answers differently from version 1
    shadow = "shadow: {version: 2}\n" + _canary(", min_agreement: 0.9").replace(
        "steps: [50, 100]", "steps: [0, 100]"
    )
    (folder / "config.pbtxt").write_text(
        kit.lifecycle_config("version_policy: { all { } }\n" + kit.routing_param(shadow))
    )
    running = start_server(root)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    data = np.ones((1, 4), dtype=np.float32)
    assert _send(client, data, WINDOW * 1.5) == 0  # shadow answers never reach the client
    kit.wait_until(lambda: _state(running)["canary"]["status"] == "rolled_back", timeout=WINDOW)
    state = _state(running)
    assert state["shadow"]["disagree"] > 0 and state["shadow"]["agree"] == 0
    assert state["canary"]["decisions"][-1]["numbers"]["agreement"] == 0.0


def test_manual_promote_and_rollback_through_the_repository_api(root, start_server, kit):
    slow = _canary().replace(f"window_s: {WINDOW}", "window_s: 3600")
    kit.make_model(root, "m", (1, 2), "version_policy: { all { } }\n" + kit.routing_param(slow))
    running = start_server(root)
    http = httpclient.InferenceServerClient(running.http_url)
    http._post(
        "v2/repository/models/m/load", json.dumps({"parameters": {"routing_action": "promote"}}), None, None
    )
    assert _state(running)["shares"] == {"1": 0.0, "2": 100.0}
    with grpc.insecure_channel(running.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        action = pb.ModelRepositoryParameter(string_param="rollback")
        stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="m", parameters={"routing_action": action})
        )
    state = _state(running)
    assert state["shares"] == {"1": 100.0, "2": 0.0}
    assert [d["action"] for d in state["canary"]["decisions"]] == ["manual-promote", "manual-rollback"]
