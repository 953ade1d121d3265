"""The Queue stage through real servers: batching, instances, priorities, policies, cancellation."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException


def one(value: float, width: int = 4, rows: int = 1) -> list[httpclient.InferInput]:
    tensor = httpclient.InferInput("INPUT0", [rows, width], "FP32")
    tensor.set_data_from_numpy(np.full((rows, width), value, dtype=np.float32))
    return [tensor]


def run_concurrently(url: str, count: int, make, model: str = "sleepy", **kwargs):
    client = httpclient.InferenceServerClient(url, concurrency=count)
    handles = [client.async_infer(model, make(i), request_id=str(i), **kwargs) for i in range(count)]
    results = [h.get_result() for h in handles]
    client.close()
    return results


def test_dynamic_batching_returns_each_client_its_own_rows(repo, start_server, sleep_config, batches):
    repo.config("sleepy", sleep_config(20, "dynamic_batching { max_queue_delay_microseconds: 20000 }"))
    running = start_server(repo.root)
    rows = lambda i: 1 + i % 3  # noqa: E731
    results = run_concurrently(running.http_url, 16, lambda i: one(float(i), rows=rows(i)))
    for i, result in enumerate(results):
        out = result.as_numpy("OUTPUT0")
        assert out.shape == (rows(i), 4)
        assert np.all(out == i), f"client {i} got someone else's rows"
    assert max(len(b) for b in batches) > 1, f"no batch formed: {batches}"
    stats = httpclient.InferenceServerClient(running.http_url).get_inference_statistics("sleepy")
    model_stats = stats["model_stats"][0]
    assert model_stats["execution_count"] == len(batches) < 16
    assert model_stats["inference_count"] == sum(rows(i) for i in range(16))
    assert sum(b["compute_infer"]["count"] for b in model_stats["batch_stats"]) == len(batches)


def test_requests_with_different_shapes_never_share_a_batch(repo, start_server, sleep_config, batches):
    repo.config("sleepy", sleep_config(20, "dynamic_batching { max_queue_delay_microseconds: 20000 }"))
    running = start_server(repo.root)
    results = run_concurrently(running.http_url, 12, lambda i: one(float(i), width=2 + i % 2))
    for i, result in enumerate(results):
        assert result.as_numpy("OUTPUT0").shape == (1, 2 + i % 2)
    for batch in batches:
        assert len({int(rid) % 2 for rid in batch}) == 1, batches


def test_without_dynamic_batching_requests_run_one_at_a_time(repo, start_server, sleep_config, batches):
    repo.config("sleepy", sleep_config(5, ""))
    running = start_server(repo.root)
    run_concurrently(running.http_url, 8, lambda i: one(float(i)))
    assert len(batches) == 8 and all(len(b) == 1 for b in batches)


def test_instances_run_in_parallel(repo, start_server, sleep_config, batches):
    repo.config("sleepy", sleep_config(200, "", count=4))
    running = start_server(repo.root)
    start = time.monotonic()
    run_concurrently(running.http_url, 4, lambda i: one(float(i)))
    elapsed = time.monotonic() - start
    assert len(batches) == 4
    assert elapsed < 0.7, f"4 instances took {elapsed:.2f}s for 4 x 200 ms: not concurrent"


def test_batch_failure_fails_only_that_batch(repo, start_server, sleep_config, batches):
    repo.config("sleepy", sleep_config(1, ""))
    running = start_server(repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    with pytest.raises(InferenceServerException, match="negative input poisons the batch"):
        client.infer("sleepy", one(-1.0))
    assert np.all(client.infer("sleepy", one(3.0)).as_numpy("OUTPUT0") == 3.0)
    stats = client.get_inference_statistics("sleepy")["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 1


PRIORITY = """
dynamic_batching {
  max_queue_delay_microseconds: 0
  priority_levels: 2
  default_priority_level: 2
}
"""


def test_high_priority_requests_overtake_a_saturated_queue(repo, start_server, sleep_config, batches):
    repo.config("sleepy", sleep_config(30, PRIORITY, max_batch_size=1))
    running = start_server(repo.root)
    with ThreadPoolExecutor(16) as pool:
        low = [pool.submit(_infer, running.http_url, f"low{i}", 0) for i in range(10)]
        time.sleep(0.1)  # the queue is now full of batch traffic
        high = [pool.submit(_infer, running.http_url, f"high{i}", 1) for i in range(3)]
        for future in low + high:
            future.result()
    order = [b[0] for b in batches]
    last_high = max(order.index(f"high{i}") for i in range(3))
    lows_after = [rid for rid in order[last_high:] if rid.startswith("low")]
    assert len(lows_after) >= 4, f"interactive traffic did not get through first: {order}"


def _infer(url: str, rid: str, priority: int) -> None:
    httpclient.InferenceServerClient(url).infer("sleepy", one(1.0), request_id=rid, priority=priority)


def test_priority_outside_the_levels_is_invalid(repo, start_server, sleep_config):
    repo.config("sleepy", sleep_config(1, PRIORITY))
    running = start_server(repo.root)
    with pytest.raises(InferenceServerException, match=r"priority 5 is outside .*\[1, 2\]"):
        httpclient.InferenceServerClient(running.http_url).infer("sleepy", one(1.0), priority=5)


QUEUE_POLICY = """
dynamic_batching {
  default_queue_policy { max_queue_size: 2 timeout_action: REJECT default_timeout_microseconds: 100000
                         allow_timeout_override: true }
}
"""


def test_max_queue_size_rejects_with_unavailable(repo, start_server, sleep_config):
    repo.config("sleepy", sleep_config(300, QUEUE_POLICY, max_batch_size=1))
    running = start_server(repo.root)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_try_infer, running.http_url, 0) for _ in range(6)]
        outcomes = [f.result() for f in futures]
    rejected = [o for o in outcomes if o and "Exceeds maximum queue size" in o]
    assert rejected and all(o.startswith("[503]") for o in rejected), outcomes


def test_queue_timeout_rejects_and_override_only_lowers(repo, start_server, sleep_config):
    repo.config("sleepy", sleep_config(300, QUEUE_POLICY, max_batch_size=1))
    running = start_server(repo.root)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(_try_infer, running.http_url, 0)
        time.sleep(0.05)
        waiting = pool.submit(_try_infer, running.http_url, 0)
        assert first.result() is None
        assert "Request timeout expired" in waiting.result()
    stats = httpclient.InferenceServerClient(running.http_url).get_inference_statistics("sleepy")
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] >= 1


def _try_infer(url: str, timeout_us: int) -> str | None:
    try:
        httpclient.InferenceServerClient(url).infer("sleepy", one(1.0), timeout=timeout_us or None)
    except InferenceServerException as exc:
        return f"[{exc.status()}] {exc.message()}"
    return None


def test_delay_action_moves_expired_requests_behind(repo, start_server, sleep_config, batches):
    policy = """
dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 }
}
"""
    repo.config("sleepy", sleep_config(50, policy, max_batch_size=1))
    running = start_server(repo.root)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_infer, running.http_url, f"r{i}", 0) for i in range(4)]
        for future in futures:
            future.result()  # delayed, never rejected
    assert len(batches) == 4


def test_disconnected_client_has_its_queued_request_dropped(repo, start_server, sleep_config, batches):
    repo.config("sleepy", sleep_config(300, "", max_batch_size=1))
    running = start_server(repo.root)

    async def scenario() -> None:
        client = aiohttpclient.InferenceServerClient(running.http_url)
        blocker = asyncio.ensure_future(client.infer("sleepy", one(1.0), request_id="blocker"))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(
            aiohttpclient.InferenceServerClient(running.http_url).infer(
                "sleepy", one(2.0), request_id="doomed"
            )
        )
        await asyncio.sleep(0.05)
        doomed.cancel()  # the client gives up and closes its connection
        await blocker
        await client.close()

    asyncio.run(scenario())
    time.sleep(0.5)
    assert ["doomed"] not in batches, batches
    stats = httpclient.InferenceServerClient(running.http_url).get_inference_statistics("sleepy")
    assert stats["model_stats"][0]["execution_count"] == 1


def test_gpu_instances_without_a_gpu_fail_the_load_clearly(repo, start_server, sleep_config):
    repo.config("sleepy", sleep_config(1, "").replace("KIND_CPU", "KIND_GPU"))
    repo.config("fine", sleep_config(1, ""))
    running = start_server(repo.root, exit_on_error=False)
    index = {
        r["name"]: r for r in httpclient.InferenceServerClient(running.http_url).get_model_repository_index()
    }
    if index["sleepy"]["state"] == "READY":
        pytest.skip("this machine has a GPU")
    assert "KIND_GPU" in index["sleepy"]["reason"] and "no GPU" in index["sleepy"]["reason"]
    assert index["fine"]["state"] == "READY"


def test_priority_is_carried_through_when_the_model_has_no_levels(repo, start_server, sleep_config):
    repo.config("sleepy", sleep_config(1, ""))
    running = start_server(repo.root)
    result = httpclient.InferenceServerClient(running.http_url).infer("sleepy", one(2.0), priority=7)
    assert np.all(result.as_numpy("OUTPUT0") == 2.0)
