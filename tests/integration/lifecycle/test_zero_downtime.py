"""Replacing a version under load loses no request; a broken new version leaves the old one serving."""

from __future__ import annotations

import threading

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def _load(
    running, data, stop: threading.Event, failures: list[str], counts: list[int], transport: str
) -> None:
    module = httpclient if transport == "http" else grpcclient
    client = module.InferenceServerClient(running.http_url if transport == "http" else running.grpc_url)
    tensor = module.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    while not stop.is_set():
        try:
            client.infer("m", [tensor])
            counts.append(1)
        except Exception as exc:
            failures.append(f"{transport}: {exc}")


def test_swaps_under_concurrent_load_lose_nothing(root, start_server, kit):
    folder = kit.make_model(root, "m", sleep_ms=10)
    running = start_server(root, model_control_mode="explicit", load_model=["*"])
    stop, failures, counts = threading.Event(), [], []
    workers = [
        threading.Thread(target=_load, args=(running, kit.ones(), stop, failures, counts, transport))
        for transport in ("http", "grpc", "http", "grpc")
    ]
    for worker in workers:
        worker.start()
    admin = httpclient.InferenceServerClient(running.http_url)
    try:
        for version in range(2, 7):  # each load brings a new version in and drains the old one
            kit.wait_until(lambda v=version: len(counts) >= 20 * (v - 1))
            kit.add_version(folder, version)
            admin.load_model("m")
            assert running.core.repository.latest("m").version == version
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert failures == []
    assert len(counts) > 100
    rows = {(r["version"], r["state"]) for r in admin.get_model_repository_index()}
    assert ("6", "READY") in rows and ("5", "UNAVAILABLE") in rows


def test_broken_new_version_keeps_the_old_one_serving(root, start_server, kit):
    folder = kit.make_model(root, "m")
    running = start_server(root, model_control_mode="explicit", load_model=["m"])
    client = httpclient.InferenceServerClient(running.http_url)
    kit.add_version(folder, 2, marker="broken")
    try:
        client.load_model("m")
        raise AssertionError("the load should fail")
    except Exception as exc:
        assert "broken" in str(exc)
    rows = {r["version"]: (r["state"], r.get("reason", "")) for r in client.get_model_repository_index()}
    assert rows["1"][0] == "READY" and "broken" in rows["1"][1]
    assert rows["2"][0] == "UNAVAILABLE" and "broken" in rows["2"][1]
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(kit.ones())
    result = client.infer("m", [tensor])
    assert result.get_response()["model_version"] == "1"
    assert client.is_model_ready("m")
