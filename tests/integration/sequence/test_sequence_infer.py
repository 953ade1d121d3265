"""Stateful models through tritonclient, HTTP and gRPC alike, with tritonclient's sequence arguments."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .conftest import Client


def test_onnx_implicit_state_accumulates_per_sequence(client: Client) -> None:
    a = [client.infer("onnx_acc", 1, sequence_id=101, sequence_start=True)]
    b = [client.infer("onnx_acc", 10, sequence_id=102, sequence_start=True)]
    a.append(client.infer("onnx_acc", 2, sequence_id=101))
    b.append(client.infer("onnx_acc", 20, sequence_id=102))
    a.append(client.infer("onnx_acc", 3, sequence_id=101, sequence_end=True))
    b.append(client.infer("onnx_acc", 30, sequence_id=102, sequence_end=True))
    assert [float(r.as_numpy("OUTPUT")[0, 0]) for r in a] == [1, 3, 6]
    assert [float(r.as_numpy("OUTPUT")[0, 0]) for r in b] == [10, 30, 60]
    assert [int(r.as_numpy("START_OUT")[0, 0]) for r in a] == [1, 0, 0]  # CONTROL_SEQUENCE_START
    assert {int(r.as_numpy("CORRID_OUT")[0, 0]) for r in a} == {101}  # CONTROL_SEQUENCE_CORRID
    assert a[0].as_numpy("ACC_OUT") is None  # state outputs the config does not list stay inside


def test_initial_state_from_a_data_file_on_every_start(client: Client) -> None:
    assert client.total("onnx_init", 1, sequence_id=401, sequence_start=True) == 101
    assert client.total("onnx_init", 2, sequence_id=401, sequence_end=True) == 103
    assert client.total("onnx_init", 5, sequence_id=401, sequence_start=True, sequence_end=True) == 105


def test_a_sequence_can_start_again_after_its_end(client: Client) -> None:
    assert client.total("onnx_acc", 5, sequence_id=7, sequence_start=True, sequence_end=True) == 5
    assert client.total("onnx_acc", 1, sequence_id=7, sequence_start=True) == 1
    assert client.total("onnx_acc", 1, sequence_id=7, sequence_end=True) == 2


def test_python_backend_sees_correlation_id_flags_and_state(client: Client) -> None:
    first = client.infer("py_acc", 2, sequence_id=55, sequence_start=True)
    middle = client.infer("py_acc", 3, sequence_id=55)
    last = client.infer("py_acc", 4, sequence_id=55, sequence_end=True)
    assert [float(r.as_numpy("OUTPUT")[0, 0]) for r in (first, middle, last)] == [2, 5, 9]
    assert [int(r.as_numpy("FLAGS")[0, 0]) for r in (first, middle, last)] == [1, 0, 2]  # START=1, END=2
    assert first.as_numpy("CID")[0, 0] == b"55"


def test_pytorch_implicit_state_accumulates_per_sequence(client: Client) -> None:
    pytest.importorskip("torch")
    a, b = 301, 302
    totals = [client.infer("torch_acc", 2, sequence_id=a, sequence_start=True)]
    totals.append(client.infer("torch_acc", 100, sequence_id=b, sequence_start=True))
    totals.append(client.infer("torch_acc", 3, sequence_id=a))
    totals.append(client.infer("torch_acc", 4, sequence_id=a, sequence_end=True))
    totals.append(client.infer("torch_acc", 1, sequence_id=b, sequence_end=True))
    assert [float(r.as_numpy("OUTPUT__0")[0, 0]) for r in totals] == [2, 100, 5, 9, 101]
    assert totals[0].as_numpy("ACC_OUT__1") is None  # the state output is not a config output


def test_string_sequence_ids(client: Client) -> None:
    ids = [f"user-{client.protocol}-a", f"user-{client.protocol}-b"]
    starts = [client.infer("py_acc", i + 1, sequence_id=s, sequence_start=True) for i, s in enumerate(ids)]
    ends = [client.infer("py_acc", 10, sequence_id=s, sequence_end=True) for s in ids]
    assert [float(r.as_numpy("OUTPUT")[0, 0]) for r in starts + ends] == [1, 2, 11, 12]
    assert starts[1].as_numpy("CID")[0, 0] == ids[1].encode()


def run_sequences(client: Client, model: str, count: int, steps: int, base: int) -> list[list[float]]:
    """``count`` concurrent sequences (one client thread each) of ``steps`` requests adding 1..steps."""

    def one(index: int) -> list[float]:
        worker = client.clone()  # dropped (and closed) on this thread: gevent clients stay on theirs
        sid = base + index
        return [
            worker.total(model, step, sequence_id=sid, sequence_start=step == 1, sequence_end=step == steps)
            for step in range(1, steps + 1)
        ]

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_oldest_strategy_keeps_each_sequence_in_order(client: Client) -> None:
    expected = list(np.cumsum(range(1, 9)).astype(float))
    for totals in run_sequences(client, "onnx_acc_oldest", count=8, steps=8, base=1000):
        assert totals == expected


def test_direct_strategy_under_concurrency(client: Client) -> None:
    expected = list(np.cumsum(range(1, 7)).astype(float))
    for totals in run_sequences(client, "onnx_acc", count=12, steps=6, base=2000):  # 12 of 2 x 8 slots
        assert totals == expected


def test_the_benchmark_accumulator_model(client: Client) -> None:
    expected = list(np.cumsum(range(1, 6)).astype(float))
    for totals in run_sequences(client, "bench_acc", count=4, steps=5, base=3000):
        assert totals == expected


def test_sequence_statistics_count_every_request(sequence_server) -> None:
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(sequence_server.http_url).get_inference_statistics("py_acc")
    entry = stats["model_stats"][0]
    assert entry["inference_stats"]["success"]["count"] >= 1
