"""Poll mode picks up repository changes; eviction keeps loaded models under the memory budget."""

from __future__ import annotations

import shutil
import threading

import tritonclient.http as httpclient


def _rows(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (r["name"], r.get("version", "")): (r["state"], r.get("reason", ""))
        for r in client.get_model_repository_index()
    }


def test_poll_mode_applies_added_changed_and_removed(root, start_server, kit):
    folder = kit.make_model(root, "m")
    running = start_server(root, model_control_mode="poll", repository_poll_secs=0.1)
    client = httpclient.InferenceServerClient(running.http_url)
    kit.add_version(folder, 2)  # a version dropped into the folder
    kit.wait_until(lambda: _rows(client).get(("m", "2"), ("",))[0] == "READY")
    assert _rows(client)[("m", "1")] == ("UNAVAILABLE", "unloaded")  # latest policy: 2 replaced 1
    kit.make_model(root, "added")
    kit.wait_until(lambda: client.is_model_ready("added"))
    (folder / "config.pbtxt").write_text(
        kit.lifecycle_config("version_policy: { all { } }")
    )  # changed config
    kit.wait_until(lambda: client.is_model_ready("m", "1"))
    shutil.rmtree(root / "added")
    kit.wait_until(lambda: _rows(client).get(("added", "1"), ("",))[0] == "UNAVAILABLE")


def test_load_and_unload_are_refused_outside_explicit_mode(root, start_server, kit):
    kit.make_model(root, "m")
    running = start_server(root, model_control_mode="poll", repository_poll_secs=30)
    client = httpclient.InferenceServerClient(running.http_url)
    try:
        client.load_model("m")
        raise AssertionError("load should be refused in poll mode")
    except Exception as exc:
        assert "explicit" in str(exc)


def test_eviction_keeps_loaded_models_under_the_budget(root, start_server, kit):
    names = [f"m{i}" for i in range(5)]
    for name in names:
        kit.make_model(root, name)  # each version folder holds 64 bytes of weights
    running = start_server(root, model_control_mode="explicit", load_model=["*"], model_memory_budget=200)
    client = httpclient.InferenceServerClient(running.http_url)
    repository = running.core.repository
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(kit.ones())
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], repository.resident_bytes())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            for name in names:  # five models cycle through room for three
                assert client.infer(name, [tensor]).as_numpy("OUTPUT0").tolist() == [[1.0] * 4]
    finally:
        stop.set()
        watcher.join()
    assert 0 < peak[0] <= 200
    assert repository.evictions >= 10
    rows = _rows(client)
    assert sum(state == "READY" for state, _ in rows.values()) == 3
    assert sum(reason == "evicted" for _, reason in rows.values()) == 2
    assert client.is_server_ready()  # evicted models do not count against readiness
    metrics = __import__("urllib.request").request.urlopen(running.metrics_url).read().decode()
    assert "nereid_model_evicted{model=" in metrics and "nereid_model_memory_budget_bytes 200.0" in metrics


def test_a_model_larger_than_the_budget_fails_clearly(root, start_server, kit):
    kit.make_model(root, "big")
    running = start_server(root, exit_on_error=False, model_memory_budget=10)
    client = httpclient.InferenceServerClient(running.http_url)
    state, reason = _rows(client)[("big", "")]
    assert state == "UNAVAILABLE" and "memory budget" in reason


def test_concurrent_requests_for_an_evicted_model_share_one_reload(root, start_server, kit):
    for name in ("a", "b", "c"):
        kit.make_model(root, name, sleep_ms=5)
    running = start_server(root, model_control_mode="explicit", load_model=["*"], model_memory_budget=150)
    repository = running.core.repository
    evicted = [name for name, entry in repository.models.items() if entry.evicted]
    assert len(evicted) == 1
    before = repository.evictions
    errors: list[str] = []

    def call() -> None:
        client = httpclient.InferenceServerClient(running.http_url)
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(kit.ones())
        try:
            client.infer(evicted[0], [tensor])
        except Exception as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert repository.evictions == before + 1  # one reload made room once
    assert not repository.models[evicted[0]].evicted
