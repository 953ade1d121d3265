"""The dynamic batcher: instance threads, batches, output checks, delivery and stop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from nereid.backends.base import InstanceContext, Model, ModelContext, ModelInstance
from nereid.server.dynamic_batcher import DynamicBatcher
from nereid.server.errors import InternalError
from nereid.server.types import InferRequest, InferResponse, RequestedOutput, Scheduler, Tensor

from .conftest import Collector, LoopThread, fp32_request, specs

MODEL_CONTEXT = ModelContext("m", 1, None, Path("."), Path("1"))  # type: ignore[arg-type]
CONFIG = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { }
"""


class DoublerModel(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return Doubler()


class Doubler(ModelInstance):
    """Returns 2x the input as OUTPUT0 and the input as OUTPUT1; records each call's size."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__(DoublerModel(MODEL_CONTEXT), InstanceContext("g", 0, "KIND_CPU"))
        self.calls: list[int] = []
        self.gate = gate
        self.entered = threading.Event()
        self.wrong_dtype = False

    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(len(requests))
        responses = []
        for request in requests:
            data = request.inputs[0].data
            twice = (data * 2).astype(np.float64 if self.wrong_dtype else np.float32)
            dtype = "FP64" if self.wrong_dtype else "FP32"
            responses.append(
                InferResponse(
                    outputs=[
                        Tensor("OUTPUT0", dtype, data.shape, twice),
                        Tensor("OUTPUT1", "FP32", data.shape, data),
                    ]
                )
            )
        return responses


@pytest.fixture
def make_batcher(config, stats, loop_thread: LoopThread):
    started: list[DynamicBatcher] = []

    def make(instance: ModelInstance, text: str = CONFIG) -> DynamicBatcher:
        parsed = config(text)
        _, outputs = specs(parsed)
        batcher = DynamicBatcher("m", "1", parsed, outputs, [instance], stats)

        async def start() -> None:
            batcher.start()

        loop_thread.run(start())
        started.append(batcher)
        return batcher

    yield make
    for batcher in started:
        loop_thread.run(batcher.stop())


def submit(batcher: DynamicBatcher, loop_thread: LoopThread, request: InferRequest) -> Collector:
    collector = Collector()
    request.sender = collector

    async def put() -> None:
        batcher.enqueue(request)

    loop_thread.run(put())
    return collector


def test_it_is_a_scheduler(make_batcher) -> None:
    batcher: Scheduler = make_batcher(Doubler())
    assert callable(batcher.enqueue)


def test_queued_requests_run_as_one_batch_and_rows_go_back_to_their_owners(
    make_batcher, loop_thread, stats
) -> None:
    gate = threading.Event()
    instance = Doubler(gate)
    batcher = make_batcher(instance)
    first = submit(batcher, loop_thread, fp32_request("m", 1))  # taken alone, blocks on the gate
    assert instance.entered.wait(10)
    rest = [submit(batcher, loop_thread, fp32_request("m", rows)) for rows in (1, 2, 3)]
    gate.set()
    for collector in (first, *rest):
        assert collector.done.wait(10)
    assert instance.calls == [1, 3]
    for rows, collector in zip((1, 2, 3), rest, strict=True):
        (response,) = collector.responses
        assert response.error is None and response.outputs[0].shape == (rows, 4)
        assert np.array_equal(response.outputs[0].data, fp32_request("m", rows).inputs[0].data * 2)
    assert stats.execution_count == 2 and stats.inference_count == 7


def test_only_requested_outputs_are_returned(make_batcher, loop_thread) -> None:
    batcher = make_batcher(Doubler())
    request = fp32_request("m", 1)
    request.outputs = [RequestedOutput("OUTPUT1")]
    collector = submit(batcher, loop_thread, request)
    assert collector.done.wait(10)
    assert [t.name for t in collector.responses[0].outputs] == ["OUTPUT1"]


def test_outputs_that_disagree_with_the_config_fail_the_request(make_batcher, loop_thread) -> None:
    instance = Doubler()
    instance.wrong_dtype = True
    collector = submit(make_batcher(instance), loop_thread, fp32_request("m", 1))
    assert collector.done.wait(10)
    error = collector.responses[0].error
    assert (
        isinstance(error, InternalError) and "datatype FP64 does not match the config's FP32" in error.message
    )


def test_a_raising_instance_fails_its_batch_and_keeps_serving(make_batcher, loop_thread) -> None:
    class Flaky(Doubler):
        def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
            if len(self.calls) == 0:
                self.calls.append(0)
                raise RuntimeError("boom")
            return super().execute(requests)

    batcher = make_batcher(Flaky())
    failed = submit(batcher, loop_thread, fp32_request("m", 1))
    assert failed.done.wait(10) and "boom" in failed.responses[0].error.message
    ok = submit(batcher, loop_thread, fp32_request("m", 1))
    assert ok.done.wait(10) and ok.responses[0].error is None


def test_cancelled_requests_are_answered_without_running(make_batcher, loop_thread) -> None:
    gate = threading.Event()
    instance = Doubler(gate)
    batcher = make_batcher(instance)
    blocker = submit(batcher, loop_thread, fp32_request("m", 1))
    assert instance.entered.wait(10)
    cancelled = submit(batcher, loop_thread, fp32_request("m", 1))
    cancelled.cancel()
    gate.set()
    assert blocker.done.wait(10) and cancelled.done.wait(10)
    assert cancelled.responses[0].error.message == "request was cancelled"
    assert instance.calls == [1]


def test_stop_waits_for_the_running_batch(make_batcher, loop_thread) -> None:
    gate = threading.Event()
    instance = Doubler(gate)
    batcher = make_batcher(instance)
    running = submit(batcher, loop_thread, fp32_request("m", 1))
    assert instance.entered.wait(10)
    stopping = asyncio.run_coroutine_threadsafe(batcher.stop(), loop_thread.loop)
    assert not stopping.done()
    gate.set()
    stopping.result(10)
    assert running.done.is_set() and running.responses[0].error is None
