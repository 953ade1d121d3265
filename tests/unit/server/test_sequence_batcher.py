"""The sequence batcher: routing, control inputs, implicit state, strategies, idle release, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nereid.backends.base import InstanceContext, Model, ModelContext, ModelInstance
from nereid.server.errors import ErrorCode, InvalidArgument, ServingError, Unavailable
from nereid.server.model_config import ConfigError
from nereid.server.sequence_batcher import SequenceBatcher
from nereid.server.sequence_config import SequenceSettings, sequence_inputs, state_outputs
from nereid.server.sequence_flags import sequence_flags
from nereid.server.sequence_slots import SequenceRouter
from nereid.server.types import InferRequest, InferResponse, Scheduler, SequenceFlags, Tensor

from .conftest import Collector, LoopThread, specs

MODEL_CONTEXT = ModelContext("acc", 1, None, Path("."), Path("1"))  # type: ignore[arg-type]
CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def acc_config(strategy: str = "direct { }", max_batch_size: int = 4, extra: str = "") -> str:
    return f"""
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
sequence_batching {{
  max_sequence_idle_microseconds: 5000000
  {strategy}
  {CONTROLS}
  {extra}
}}
"""


class AccModel(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return Accumulator(context.index)


class Accumulator(ModelInstance):
    """OUTPUT = ACC_OUT = ACC_IN + INPUT; records what the scheduler fed each request."""

    def __init__(self, index: int = 0, gate: threading.Event | None = None) -> None:
        super().__init__(AccModel(MODEL_CONTEXT), InstanceContext("g", index, "KIND_CPU"))
        self.gate = gate
        self.seen: list[dict[str, object]] = []
        self.batches: list[int] = []

    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(len(requests))
        responses = []
        for request in requests:
            feed = {t.name: t for t in request.inputs}
            total = feed["ACC_IN"].data + feed["INPUT"].data
            self.seen.append(
                {
                    "instance": self.context.index,
                    "corrid": int(feed["CORRID"].data[0, 0]),
                    "start": int(feed["START"].data[0, 0]),
                    "end": float(feed["END"].data[0, 0]),
                    "ready": bool(feed["READY"].data[0, 0]),
                    "shapes": {name: t.shape for name, t in feed.items()},
                    "datatypes": {name: t.datatype for name, t in feed.items()},
                }
            )
            responses.append(
                InferResponse(
                    outputs=[
                        Tensor("OUTPUT", "FP32", total.shape, total),
                        Tensor("ACC_OUT", "FP32", total.shape, total),
                    ]
                )
            )
        return responses


@pytest.fixture
def make_batcher(config, stats, loop_thread: LoopThread):
    started: list[SequenceBatcher] = []

    def make(instances: list[ModelInstance], text: str) -> SequenceBatcher:
        parsed = config(text)
        _, outputs = specs(parsed)
        settings = SequenceSettings.from_config(parsed, None, "test")
        batcher = SequenceBatcher("acc", "1", parsed, outputs, instances, stats, settings)

        async def start() -> None:
            batcher.start()

        loop_thread.run(start())
        started.append(batcher)
        return batcher

    yield make
    for batcher in started:
        loop_thread.run(batcher.stop())


def request(
    value: float, cid: int | str, start: bool = False, end: bool = False, rows: int = 1
) -> InferRequest:
    data = np.full((rows, 1), value, dtype=np.float32)
    return InferRequest(
        "acc", [Tensor("INPUT", "FP32", data.shape, data)], sequence=SequenceFlags(cid, start, end)
    )


def submit(batcher: SequenceBatcher, loop_thread: LoopThread, req: InferRequest) -> Collector:
    collector = Collector()
    req.sender = collector

    async def put() -> None:
        batcher.enqueue(req)

    loop_thread.run(put())
    return collector


def value(collector: Collector) -> float:
    assert collector.done.wait(10)
    response = collector.responses[-1]
    assert response.error is None, response.error
    assert [t.name for t in response.outputs] == ["OUTPUT"]  # the state output stays inside
    return float(response.outputs[0].data[0, 0])


def error(collector: Collector) -> ServingError:
    assert collector.done.wait(10)
    failure = collector.responses[-1].error
    assert failure is not None
    return failure


# ---- routing, controls and state -------------------------------------------------------------


def test_it_is_a_scheduler(make_batcher) -> None:
    batcher: Scheduler = make_batcher([Accumulator()], acc_config())
    assert callable(batcher.enqueue)


def test_state_accumulates_per_sequence_and_controls_follow_the_flags(make_batcher, loop_thread) -> None:
    instance = Accumulator()
    batcher = make_batcher([instance], acc_config())
    a = [submit(batcher, loop_thread, request(1, 7, start=True))]
    b = [submit(batcher, loop_thread, request(10, 8, start=True))]
    a.append(submit(batcher, loop_thread, request(2, 7)))
    b.append(submit(batcher, loop_thread, request(20, 8)))
    a.append(submit(batcher, loop_thread, request(3, 7, end=True)))
    b.append(submit(batcher, loop_thread, request(30, 8, end=True)))
    assert [value(c) for c in a] == [1, 3, 6]
    assert [value(c) for c in b] == [10, 30, 60]
    first = next(s for s in instance.seen if s["corrid"] == 7)
    last = [s for s in instance.seen if s["corrid"] == 7][-1]
    assert (first["start"], first["end"], first["ready"]) == (1, 0.0, True)
    assert (last["start"], last["end"], last["ready"]) == (0, 1.0, True)
    assert first["shapes"] == {
        "INPUT": (1, 1),
        "START": (1, 1),
        "END": (1, 1),
        "READY": (1, 1),
        "CORRID": (1, 1),
        "ACC_IN": (1, 1),
    }
    assert first["datatypes"] == {
        "INPUT": "FP32",
        "START": "INT32",
        "END": "FP32",
        "READY": "BOOL",
        "CORRID": "UINT64",
        "ACC_IN": "FP32",
    }


def test_a_new_start_resets_the_state(make_batcher, loop_thread) -> None:
    batcher = make_batcher([Accumulator()], acc_config())
    assert value(submit(batcher, loop_thread, request(5, 3, start=True))) == 5
    assert value(submit(batcher, loop_thread, request(5, 3))) == 10
    # A START for a live sequence restarts it in the same slot (Triton's conflict rule).
    assert value(submit(batcher, loop_thread, request(1, 3, start=True))) == 1
    assert value(submit(batcher, loop_thread, request(1, 3, end=True))) == 2


def test_each_sequence_stays_on_one_instance_in_order(make_batcher, loop_thread) -> None:
    instances = [Accumulator(0), Accumulator(1)]
    batcher = make_batcher(instances, acc_config(max_batch_size=2))
    collectors: dict[int, list[Collector]] = {cid: [] for cid in range(1, 7)}
    for step in range(5):
        for cid in collectors:
            req = request(1, cid, start=step == 0, end=step == 4)
            collectors[cid].append(submit(batcher, loop_thread, req))
    for cid, found in collectors.items():
        assert [value(c) for c in found] == [1, 2, 3, 4, 5], cid
    for cid in collectors:
        homes = {s["instance"] for inst in instances for s in inst.seen if s["corrid"] == cid}
        assert len(homes) == 1, (cid, homes)
    assert all(inst.seen for inst in instances)  # sequences spread over both instances


def test_direct_batches_one_request_per_slot(make_batcher, loop_thread) -> None:
    gate = threading.Event()
    instance = Accumulator(gate=gate)
    batcher = make_batcher([instance], acc_config(max_batch_size=4))
    blocker = submit(batcher, loop_thread, request(0, 99, start=True, end=True))
    time.sleep(0.1)  # the blocker is executing; the rest queue behind it
    found = [submit(batcher, loop_thread, request(1, cid, start=True)) for cid in (1, 2, 3)]
    found += [submit(batcher, loop_thread, request(1, cid, end=True)) for cid in (1, 2, 3)]
    gate.set()
    value(blocker)
    assert [value(c) for c in found] == [1, 1, 1, 2, 2, 2]
    assert instance.batches == [1, 3, 3]


def test_oldest_waits_for_a_preferred_batch(make_batcher, loop_thread) -> None:
    instance = Accumulator()
    strategy = "oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 2000000 }"
    batcher = make_batcher([instance], acc_config(strategy))
    first = submit(batcher, loop_thread, request(1, 1, start=True))
    time.sleep(0.2)
    assert not first.done.is_set()  # waits for a second sequence (preferred size 2)
    second = submit(batcher, loop_thread, request(2, 2, start=True))
    assert (value(first), value(second)) == (1, 2)
    assert instance.batches == [2]


def test_backlog_waits_for_a_free_slot(make_batcher, loop_thread) -> None:
    batcher = make_batcher([Accumulator()], acc_config(max_batch_size=1))
    a1 = submit(batcher, loop_thread, request(1, 1, start=True))
    b1 = submit(batcher, loop_thread, request(5, 2, start=True))  # no slot: backlog
    b2 = submit(batcher, loop_thread, request(5, 2, end=True))
    assert value(a1) == 1
    time.sleep(0.1)
    assert not b1.done.is_set()
    a2 = submit(batcher, loop_thread, request(1, 1, end=True))
    assert value(a2) == 2
    assert (value(b1), value(b2)) == (5, 10)


# ---- bad requests ------------------------------------------------------------------------------


def enqueue_error(batcher: SequenceBatcher, loop_thread: LoopThread, req: InferRequest) -> ServingError:
    with pytest.raises(ServingError) as caught:
        submit(batcher, loop_thread, req)
    return caught.value


def test_a_request_without_a_sequence_id_gets_tritons_error(make_batcher, loop_thread) -> None:
    batcher = make_batcher([Accumulator()], acc_config())
    for flags in (None, SequenceFlags(0, True), SequenceFlags("", True)):
        req = request(1, 1)
        req.sequence = flags
        failure = enqueue_error(batcher, loop_thread, req)
        assert failure.code is ErrorCode.INVALID_ARG
        assert (
            failure.message
            == "inference request to model 'acc' must specify a non-zero or non-empty correlation ID"
        )


def test_continuing_an_unknown_sequence_gets_tritons_error(make_batcher, loop_thread) -> None:
    batcher = make_batcher([Accumulator()], acc_config())
    for req in (request(1, 42), request(1, 42, end=True)):
        failure = enqueue_error(batcher, loop_thread, req)
        assert isinstance(failure, InvalidArgument)
        assert failure.message == (
            "inference request for sequence 42 to model 'acc' must specify the START flag on the first "
            "request of the sequence"
        )
    # After END the sequence is gone: the next request without START is refused.
    assert value(submit(batcher, loop_thread, request(1, 5, start=True, end=True))) == 1
    assert "must specify the START flag" in enqueue_error(batcher, loop_thread, request(1, 5)).message
    # The scheduler keeps serving.
    assert value(submit(batcher, loop_thread, request(3, 6, start=True, end=True))) == 3


def test_batch_size_must_be_one(make_batcher, loop_thread) -> None:
    batcher = make_batcher([Accumulator()], acc_config())
    failure = enqueue_error(batcher, loop_thread, request(1, 1, start=True, rows=2))
    assert failure.message == (
        "inference request to model 'acc' must specify batch-size 1 due to requirements of sequence batcher"
    )


def test_string_sequence_id_against_an_integer_corrid_is_refused(make_batcher, loop_thread) -> None:
    batcher = make_batcher([Accumulator()], acc_config())
    failure = enqueue_error(batcher, loop_thread, request(1, "abc", start=True))
    assert failure.code is ErrorCode.INVALID_ARG and "CONTROL_SEQUENCE_CORRID" in failure.message


def test_an_idle_sequence_loses_its_slot(make_batcher, loop_thread) -> None:
    text = acc_config().replace(
        "max_sequence_idle_microseconds: 5000000", "max_sequence_idle_microseconds: 100000"
    )
    batcher = make_batcher([Accumulator()], text)
    assert value(submit(batcher, loop_thread, request(1, 9, start=True))) == 1
    time.sleep(0.4)
    failure = enqueue_error(batcher, loop_thread, request(1, 9))
    assert failure.code is ErrorCode.INVALID_ARG
    assert "must specify the START flag" in failure.message
    assert "idle for more than 100000 microseconds" in failure.message


def test_a_full_backlog_refuses_new_sequences(make_batcher, loop_thread) -> None:
    text = acc_config(max_batch_size=1) + (
        'parameters { key: "max_sequence_backlog" value: { string_value: "1" } }'
    )
    batcher = make_batcher([Accumulator()], text)
    assert value(submit(batcher, loop_thread, request(1, 1, start=True))) == 1
    waiting = submit(batcher, loop_thread, request(1, 2, start=True))
    failure = enqueue_error(batcher, loop_thread, request(1, 3, start=True))
    assert isinstance(failure, Unavailable)
    assert "sequence 3" in failure.message and "max_sequence_backlog" in failure.message
    assert value(submit(batcher, loop_thread, request(1, 1, end=True))) == 2
    assert value(waiting) == 1


def test_stop_fails_queued_requests(make_batcher, loop_thread) -> None:
    gate = threading.Event()
    batcher = make_batcher([Accumulator(gate=gate)], acc_config(max_batch_size=1))
    running = submit(batcher, loop_thread, request(1, 1, start=True))
    time.sleep(0.1)
    queued = submit(batcher, loop_thread, request(1, 1))
    future = asyncio.run_coroutine_threadsafe(batcher.stop(), loop_thread.loop)
    assert error(queued).code is ErrorCode.UNAVAILABLE
    assert not future.done()  # stop waits for the running batch
    gate.set()
    future.result(10)
    assert value(running) == 1


# ---- the router alone --------------------------------------------------------------------------


def test_router_takes_lowest_slot_first_across_instances() -> None:
    router = SequenceRouter("m", instances=2, slots_per_instance=2, idle_ns=10**9)
    homes = [router.route(request(1, cid), SequenceFlags(cid, True), 0) for cid in (1, 2, 3, 4)]
    assert [(s.instance, s.index) for s in homes if s is not None] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert router.route(request(1, 5), SequenceFlags(5, True), 0) is None
    assert router.backlog_size == 1


def test_router_hands_a_released_slot_to_the_backlog() -> None:
    router = SequenceRouter("m", instances=1, slots_per_instance=1, idle_ns=10**9)
    slot = router.route(request(1, 1), SequenceFlags(1, True), 0)
    assert slot is not None
    router.route(request(1, 2), SequenceFlags(2, True), 0)
    slot.queue.clear()
    router.release(slot, 1)
    assert slot.correlation_id == 2 and len(slot.queue) == 1
    assert router.route(request(1, 2), SequenceFlags(2), 2) is slot  # later requests follow


# ---- config and parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (
            'control_input [ { name: "INPUT" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] } ]',
            "already a model input",
        ),
        (
            'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ]',
            "needs exactly one of int32_false_true",
        ),
        (
            'control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]',
            "CONTROL_SEQUENCE_CORRID needs",
        ),
        (
            'state [ { input_name: "INPUT" output_name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "already a model input",
        ),
        ('state [ { input_name: "S" output_name: "X" dims: [ 1 ] } ]', "'data_type' must be set"),
        ("iterative_sequence: true", "not supported"),
    ],
)
def test_bad_sequence_configs_name_the_field(config, extra: str, fragment: str) -> None:
    text = f"""
max_batch_size: 1
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
sequence_batching {{ {extra} }}
"""
    with pytest.raises(ConfigError, match=fragment) as caught:
        SequenceSettings.from_config(config(text), None, "models/acc")
    assert "models/acc: sequence_batching" in caught.value.message


def test_initial_state_from_a_data_file(config, tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    np.array([1.5, 2.5], dtype="<f4").tofile(tmp_path / "initial_state" / "init.bin")
    text = """
max_batch_size: 0
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
sequence_batching { state [ { input_name: "S" output_name: "S_OUT" data_type: TYPE_FP32 dims: [ 2 ]
  initial_state: { data_type: TYPE_FP32 dims: [ 2 ] data_file: "init.bin" name: "init" } } ] }
"""
    parsed = config(text)
    settings = SequenceSettings.from_config(parsed, tmp_path, "test")
    assert settings.states[0].initial.tolist() == [1.5, 2.5]
    assert [s.name for s in sequence_inputs(parsed)] == ["S"]
    assert [s.name for s in state_outputs(parsed)] == ["S_OUT"]


def test_sequence_parameters_parse_once() -> None:
    assert sequence_flags({"priority": 1}) is None
    assert sequence_flags({"sequence_id": 5, "sequence_start": True}) == SequenceFlags(5, True, False)
    assert sequence_flags({"sequence_id": "abc", "sequence_end": True}) == SequenceFlags("abc", False, True)
    for bad in ({"sequence_id": -1}, {"sequence_id": 1.5}, {"sequence_id": 1, "sequence_start": "yes"}):
        with pytest.raises(InvalidArgument):
            sequence_flags(bad)
