"""Routing by config over real servers: weights, sticky users across a restart, named versions."""

from __future__ import annotations

import collections

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.server.types import InferRequest, Tensor

WEIGHTS = "weights: {1: 80, 2: 20}\nsticky: {parameter: user}"


def _infer(client, data, user: str | None = None, version: str = "") -> str:
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    params = {"user": user} if user is not None else None
    result = client.infer("m", [tensor], model_version=version, parameters=params)
    return result.get_response()["model_version"]


def test_weights_hold_within_a_statistical_bound(root, start_server, kit):
    kit.make_model(root, "m", (1, 2), "version_policy: { all { } }\n" + kit.routing_param(WEIGHTS))
    running = start_server(root)
    client = httpclient.InferenceServerClient(running.http_url)
    data, n = kit.ones(), 4000
    # The routing decision itself, drawn n times on the running core (HTTP costs ~50 ms a call here).
    request = InferRequest("m", [Tensor("INPUT0", "FP32", (1, 4), data)])
    counts = collections.Counter(running.core.route(request).version for _ in range(n))
    # Binomial(4000, 0.2): sd ~ 25.3; 5 sd either side.
    assert abs(counts[2] - 0.2 * n) < 5 * 25.3, counts
    over_http = collections.Counter(_infer(client, data) for _ in range(60))
    assert set(over_http) == {"1", "2"}
    # Named versions are exact; statistics are per version so the split is visible.
    assert {_infer(client, data, version="2") for _ in range(10)} == {"2"}
    stats = client.get_inference_statistics("m")["model_stats"]
    successes = {s["version"]: s["inference_stats"]["success"]["count"] for s in stats}
    assert successes["1"] + successes["2"] == 70 and successes["2"] >= 10
    state = client._get("v2/repository/models/m/routing", None, None).read()
    assert b'"shares"' in state


def test_sticky_users_keep_their_version_across_a_restart(root, start_server, kit):
    kit.make_model(root, "m", (1, 2), "version_policy: { all { } }\n" + kit.routing_param(WEIGHTS))
    data, users = kit.ones(), [f"user-{i}" for i in range(30)]

    def assignment() -> dict[str, str]:
        running = start_server(root)
        client = httpclient.InferenceServerClient(running.http_url)
        first = {u: _infer(client, data, u) for u in users}
        assert first == {u: _infer(client, data, u) for u in users[:10]} | {u: first[u] for u in users[10:]}
        running.loop.call_soon_threadsafe(running.server.request_stop)
        return first

    before = assignment()
    assert set(before.values()) == {"1", "2"}  # 30 users land on both versions
    assert assignment() == before


def test_routing_config_errors_name_the_field(root, start_server, kit):
    bad = {
        "sum": ("weights: {1: 60, 2: 30}", "weights: the weights must sum to 100"),
        "unserved": ("weights: {1: 50, 3: 50}", "weights names version 3"),
        "canary": ("canary: {stable: 1, candidate: 7}", "canary.candidate names unknown version 7"),
    }
    for name, (text, _) in bad.items():
        kit.make_model(root, name, (1, 2), "version_policy: { all { } }\n" + kit.routing_param(text))
    running = start_server(root, exit_on_error=False)
    client = httpclient.InferenceServerClient(running.http_url)
    rows = {r["name"]: r for r in client.get_model_repository_index()}
    for name, (_, message) in bad.items():
        assert rows[name]["state"] == "UNAVAILABLE"
        assert "parameters['nereid.routing']" in rows[name]["reason"] and message in rows[name]["reason"]


def test_a_bad_routing_reload_keeps_the_previous_config(root, start_server, kit):
    folder = kit.make_model(root, "m", (1, 2), "version_policy: { all { } }\n" + kit.routing_param(WEIGHTS))
    running = start_server(root, model_control_mode="explicit", load_model=["m"])
    client = httpclient.InferenceServerClient(running.http_url)
    (folder / "config.pbtxt").write_text(
        kit.lifecycle_config("version_policy: { all { } }\n" + kit.routing_param("weights: {1: 10}"))
    )
    try:
        client.load_model("m")
        raise AssertionError("the reload should fail")
    except InferenceServerException as exc:
        assert "weights" in str(exc)
    assert running.core.routing_state("m")["shares"] == {"1": 80.0, "2": 20.0}
    assert client.is_model_ready("m", "2")


def test_sticky_by_header_over_both_transports(root, start_server, kit):
    import tritonclient.grpc as grpcclient

    from nereid.server.routing.policy import sticky_point

    text = "weights: {1: 50, 2: 50}\nsticky: {header: X-User}"
    kit.make_model(root, "m", (1, 2), "version_policy: { all { } }\n" + kit.routing_param(text))
    running = start_server(root)
    http = httpclient.InferenceServerClient(running.http_url)
    grpc = grpcclient.InferenceServerClient(running.grpc_url)
    h_in = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    g_in = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    h_in.set_data_from_numpy(kit.ones())
    g_in.set_data_from_numpy(kit.ones())
    for user in [f"u{i}" for i in range(8)]:
        expected = "1" if sticky_point("m", user) < 50 else "2"
        got_http = http.infer("m", [h_in], headers={"X-User": user}).get_response()["model_version"]
        got_grpc = grpc.infer("m", [g_in], headers={"x-user": user}).get_response().model_version
        assert got_http == got_grpc == expected
