"""Sequence control misuse: each a clear 4xx / gRPC status naming the thing, and the server keeps serving."""

from __future__ import annotations

import threading
import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import Client, onnx_accumulator, with_initial_state

INVALID = {"http": "400", "grpc": "INVALID_ARGUMENT"}
UNAVAILABLE = {"http": "503", "grpc": "UNAVAILABLE"}


def assert_still_serving(client: Client, sid: int) -> None:
    assert client.total("onnx_acc", 4, sequence_id=sid, sequence_start=True, sequence_end=True) == 4


def test_a_sequence_model_without_a_sequence_id(client: Client) -> None:
    status, message = client.failure("onnx_acc")
    assert status == INVALID[client.protocol]
    assert (
        message == "inference request to model 'onnx_acc' must specify a non-zero or non-empty correlation ID"
    )
    status, _ = client.failure("onnx_acc", sequence_id=0, sequence_start=True)
    assert status == INVALID[client.protocol]
    assert_still_serving(client, 9001)


@pytest.mark.parametrize("flags", [{}, {"sequence_end": True}], ids=["unknown", "end_before_start"])
def test_a_sequence_that_never_started(client: Client, flags: dict) -> None:
    status, message = client.failure("onnx_acc", sequence_id=424242, **flags)
    assert status == INVALID[client.protocol]
    assert message == (
        "inference request for sequence 424242 to model 'onnx_acc' must specify the START flag on the first "
        "request of the sequence"
    )
    assert_still_serving(client, 9002)


def test_a_sequence_after_its_end(client: Client) -> None:
    sid = f"done-{client.protocol}"
    client.total("py_acc", 1, sequence_id=sid, sequence_start=True, sequence_end=True)
    status, message = client.failure("py_acc", sequence_id=sid)
    assert status == INVALID[client.protocol]
    assert f"sequence {sid} to model 'py_acc' must specify the START flag" in message


def test_an_idle_timed_out_sequence(client: Client) -> None:
    sid = 7000 + len(client.protocol)
    assert client.total("onnx_idle", 1, sequence_id=sid, sequence_start=True) == 1
    time.sleep(0.6)  # max_sequence_idle_microseconds: 200000
    status, message = client.failure("onnx_idle", sequence_id=sid)
    assert status == INVALID[client.protocol]
    assert f"inference request for sequence {sid} to model 'onnx_idle' must specify the START flag" in message
    assert "idle for more than 200000 microseconds" in message
    assert client.total("onnx_idle", 2, sequence_id=sid, sequence_start=True, sequence_end=True) == 2


def test_too_many_concurrent_sequences(client: Client) -> None:
    # onnx_one_slot: one slot, and max_sequence_backlog 1. The first sequence holds the slot and
    # the second waits in the backlog (sent without waiting for its answer), so a third is refused.
    base = 100 if client.protocol == "http" else 200
    assert client.total("onnx_one_slot", 1, sequence_id=base + 1, sequence_start=True) == 1
    pending = _send_async(client, "onnx_one_slot", base + 2)
    time.sleep(0.3)
    status, message = client.failure("onnx_one_slot", sequence_id=base + 3, sequence_start=True)
    assert status == UNAVAILABLE[client.protocol]
    assert f"sequence {base + 3} to model 'onnx_one_slot' cannot start" in message
    assert "max_sequence_backlog" in message
    assert client.total("onnx_one_slot", 1, sequence_id=base + 1, sequence_end=True) == 2  # the slot frees
    assert _result(pending) == [5, 5]  # the backlogged sequence ran, then ended


def test_batch_size_above_one(client: Client) -> None:
    status, message = client.failure("onnx_acc", rows=2, sequence_id=9, sequence_start=True)
    assert status == INVALID[client.protocol]
    assert message == (
        "inference request to model 'onnx_acc' must specify batch-size 1 due to requirements of sequence batcher"
    )


def test_a_string_id_for_an_integer_corrid_input(client: Client) -> None:
    status, message = client.failure("onnx_acc", sequence_id="abc", sequence_start=True)
    assert status == INVALID[client.protocol]
    assert "CONTROL_SEQUENCE_CORRID input 'CORRID' is UINT64" in message
    assert_still_serving(client, 9003)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_missing_initial_state_file_fails_the_load(tmp_path, start_server, protocol: str) -> None:
    onnx_accumulator(tmp_path, "no_init", "direct { }")
    with_initial_state(tmp_path, "no_init", "nope.bin", None)
    running = start_server(tmp_path, model_control_mode="explicit")
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(running.http_url if protocol == "http" else running.grpc_url)
    try:
        client.load_model("no_init")
    except InferenceServerException as exc:
        status, message = str(exc.status()).removeprefix("StatusCode."), exc.message()
    else:
        raise AssertionError("the load did not fail")
    assert status == INVALID[protocol]
    assert (
        "sequence_batching.state[0].initial_state" in message and "no_init/initial_state/nope.bin" in message
    )
    onnx_accumulator(tmp_path, "fine", "direct { }")
    client.load_model("fine")  # the server keeps loading and serving
    fine = Client(running, protocol)
    assert fine.total("fine", 3, sequence_id=1, sequence_start=True, sequence_end=True) == 3
    fine.close()
    client.close()


def _send_async(client: Client, model: str, sid: int) -> tuple[threading.Thread, list[float]]:
    """Run a two-request sequence on its own thread and connection (it waits for a slot)."""
    totals: list[float] = []

    def run() -> None:
        own = client.clone()  # dropped (and closed) on this thread: gevent clients stay on theirs
        totals.append(own.total(model, 5, sequence_id=sid, sequence_start=True))
        totals.append(own.total(model, 0, sequence_id=sid, sequence_end=True))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, totals


def _result(pending: tuple[threading.Thread, list[float]]) -> list[float]:
    thread, totals = pending
    thread.join(10)
    return totals
