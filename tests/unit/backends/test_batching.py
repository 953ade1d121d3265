"""The shared batching loop on a real onnxruntime session, and the merge/split helpers."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from nereid.backends.base import ExecutionTimer
from nereid.backends.batching import BatchLoop, Fetched, group_by_shape, merge_inputs, split_outputs
from nereid.server.errors import InternalError, InvalidArgument
from nereid.server.types import InferRequest, Tensor


def reshape_session() -> ort.InferenceSession:
    """``Y = Reshape(X, [-1, 2])`` over X of shape [N, D]: D == 2 keeps the rows; D == 3 fails in
    onnxruntime for an odd row count; D == 4 returns twice the rows."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "S"], ["Y"])],
        "reshape",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "D"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2])],
        initializer=[helper.make_tensor("S", TensorProto.INT64, [2], [-1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class Runner:
    """A BatchLoop over the session that counts framework calls and their batch rows."""

    def __init__(self, batched: bool = True) -> None:
        self.session = reshape_session()
        self.rows: list[int] = []
        self.timer = ExecutionTimer()
        self.loop: BatchLoop[dict[str, np.ndarray], list[Any]] = BatchLoop(
            model="reshape",
            framework="ONNX Runtime",
            batched=batched,
            timer=self.timer,
            prepare=self.prepare,
            bind=lambda call, feed: feed,
            run=self.run,
            fetch=self.fetch,
        )

    @staticmethod
    def prepare(request: InferRequest) -> None:
        if request.inputs[0].datatype != "FP32":
            raise InvalidArgument(f"input 'X' must be FP32, got {request.inputs[0].datatype}")

    def run(self, feed: dict[str, np.ndarray]) -> list[Any]:
        self.rows.append(feed["X"].shape[0])
        return self.session.run(["Y"], feed)

    def fetch(self, arrays: list[Any], call: list[InferRequest]) -> Fetched:
        return {"Y": ("FP32", arrays[0])}


def request(array: np.ndarray, datatype: str = "FP32") -> InferRequest:
    return InferRequest("reshape", [Tensor("X", datatype, tuple(array.shape), array)])


def rows(count: int, width: int = 2, start: float = 0) -> np.ndarray:
    return np.arange(start, start + count * width, dtype=np.float32).reshape(count, width)


def test_requests_whose_shapes_agree_run_as_one_batch_and_split_back():
    runner = Runner()
    parts = [rows(1), rows(3, start=10), rows(2, start=100)]
    responses = runner.loop.execute([request(p) for p in parts])
    assert runner.rows == [6]
    for part, response in zip(parts, responses, strict=True):
        assert response.error is None
        (tensor,) = response.outputs
        assert (tensor.name, tensor.datatype, tensor.shape) == ("Y", "FP32", part.shape)
        np.testing.assert_array_equal(tensor.data, part)


def test_requests_are_grouped_by_shape_and_answered_in_order():
    runner = Runner()
    narrow, wide = rows(1), rows(1, width=4)  # D == 4 is [1, 4]: one framework call per shape
    responses = runner.loop.execute([request(narrow), request(rows(2)), request(narrow)])
    assert runner.rows == [4]
    responses = runner.loop.execute([request(narrow), request(wide), request(rows(2))])
    assert runner.rows == [4, 3, 1]
    assert responses[0].error is None and responses[2].error is None
    assert responses[2].outputs[0].shape == (2, 2)
    assert isinstance(responses[1].error, InternalError)  # [1, 4] reshapes to two rows for one


def test_without_batching_every_request_runs_alone():
    runner = Runner(batched=False)
    responses = runner.loop.execute([request(rows(2)), request(rows(3))])
    assert runner.rows == [2, 3]
    assert [r.outputs[0].shape for r in responses] == [(2, 2), (3, 2)]


def test_a_request_that_fails_to_prepare_gets_its_own_error_and_runs_in_no_group():
    runner = Runner()
    bad = request(np.zeros((1, 2), np.float64), "FP64")
    first, second, third = runner.loop.execute([request(rows(1)), bad, request(rows(1))])
    assert runner.rows == [2]
    assert first.error is None and third.error is None
    assert isinstance(second.error, InvalidArgument) and "must be FP32, got FP64" in second.error.message


def test_a_framework_failure_fails_its_group_only_and_the_instance_keeps_serving():
    runner = Runner()
    good = rows(1)
    odd = [np.zeros((1, 3), np.float32), np.zeros((2, 3), np.float32)]  # 9 values cannot reshape to [-1, 2]
    responses = runner.loop.execute([request(odd[0]), request(good), request(odd[1])])
    assert runner.rows == [3, 1]
    assert responses[1].error is None
    for failed in (responses[0], responses[2]):
        assert isinstance(failed.error, InternalError)
        assert failed.error.message.startswith("model 'reshape': ONNX Runtime execute failure: ")
        assert "Reshape" in failed.error.message
    assert responses[0].error is responses[2].error  # one error for the whole group
    (again,) = runner.loop.execute([request(good)])
    np.testing.assert_array_equal(again.outputs[0].data, good)


def test_a_batched_output_without_a_row_per_input_row_fails_the_group():
    (response,) = Runner().loop.execute([request(rows(1, width=4))])
    assert isinstance(response.error, InternalError)
    assert response.error.message == (
        "model 'reshape': output 'Y' has shape [2, 2], but a batched model must return 1 row(s) along dim 0 "
        "for this batch"
    )


def test_phases_are_timed_even_when_the_group_fails():
    runner = Runner()
    runner.loop.execute([request(rows(2))])
    assert runner.timer.input_ns > 0 and runner.timer.infer_ns > 0 and runner.timer.output_ns > 0
    failing = Runner()
    failing.loop.execute([request(np.zeros((1, 3), np.float32))])
    assert failing.timer.input_ns > 0 and failing.timer.infer_ns > 0 and failing.timer.output_ns == 0


# ---------------------------------------------------------------------------------------------
# Helpers


def test_group_by_shape_ignores_dim_0_and_input_order():
    a = InferRequest(
        "m", [Tensor("A", "FP32", (1, 2), rows(1)), Tensor("B", "INT32", (1,), np.ones(1, np.int32))]
    )
    b = InferRequest(
        "m", [Tensor("B", "INT32", (3,), np.ones(3, np.int32)), Tensor("A", "FP32", (3, 2), rows(3))]
    )
    other_type = InferRequest("m", [Tensor("A", "FP64", (1, 2), rows(1).astype(np.float64))])
    other_name = InferRequest("m", [Tensor("C", "FP32", (1, 2), rows(1))])
    assert group_by_shape([a, other_type, b, other_name]) == [[0, 2], [1], [3]]
    assert group_by_shape([]) == []


def test_merge_passes_a_single_request_through_and_concatenates_several_by_name():
    single = rows(2)
    assert merge_inputs([request(single)])["X"] is single
    first = InferRequest(
        "m", [Tensor("A", "FP32", (1, 2), rows(1)), Tensor("B", "FP32", (1, 2), rows(1, start=5))]
    )
    second = InferRequest(
        "m", [Tensor("B", "FP32", (1, 2), rows(1, start=7)), Tensor("A", "FP32", (1, 2), rows(1))]
    )
    merged = merge_inputs([first, second])
    assert list(merged) == ["A", "B"]
    assert merged["B"].tolist() == [[5, 6], [7, 8]]


def test_merge_refuses_a_request_without_one_of_the_inputs():
    partial = InferRequest("m", [Tensor("A", "FP32", (1, 2), rows(1))])
    full = InferRequest("m", [Tensor("A", "FP32", (1, 2), rows(1)), Tensor("B", "FP32", (1, 2), rows(1))])
    with pytest.raises(ValueError, match="input 'B' missing from one request of the batch"):
        merge_inputs([full, partial])


def test_split_returns_views_in_order_including_empty_parts():
    array = rows(5)
    parts = split_outputs(array, [2, 0, 3])
    assert [p.shape for p in parts] == [(2, 2), (0, 2), (3, 2)]
    assert all(np.shares_memory(p, array) for p in parts if p.size)
    np.testing.assert_array_equal(np.concatenate(parts), array)


def test_split_leaves_a_single_request_alone_and_refuses_a_row_mismatch():
    array = rows(3)
    assert split_outputs(array, [1])[0] is array
    with pytest.raises(ValueError, match="output has 3 rows for a batch of 4"):
        split_outputs(array, [2, 2])
