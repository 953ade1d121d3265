"""Request validation against a model's signature, before anything is queued."""

from __future__ import annotations

import numpy as np
import pytest

from nereid.server.errors import InvalidArgument
from nereid.server.types import InferRequest, RequestedOutput, Tensor
from nereid.server.validation import int_parameter, validate_request

from .conftest import specs

CONFIG = """
max_batch_size: 4
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 2, -1 ] },
  { name: "B" data_type: TYPE_INT32 dims: [ 1 ] optional: true }
]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def tensor(name: str, datatype: str, shape: tuple[int, ...]) -> Tensor:
    dtype = np.float32 if datatype == "FP32" else np.int32
    return Tensor(name, datatype, shape, np.zeros(shape, dtype))


@pytest.fixture
def check(config):
    parsed = config(CONFIG)
    inputs, outputs = specs(parsed)

    def run(*tensors: Tensor, outputs_wanted: tuple[str, ...] = ()) -> None:
        request = InferRequest("m", list(tensors), outputs=[RequestedOutput(n) for n in outputs_wanted])
        validate_request(request, "m", inputs, outputs, parsed.max_batch_size)

    return run


def test_a_request_that_fits_passes_with_optional_inputs_left_out(check) -> None:
    check(tensor("A", "FP32", (3, 2, 7)), outputs_wanted=("OUT",))
    check(tensor("A", "FP32", (1, 2, 1)), tensor("B", "INT32", (1, 1)))


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ((tensor("A", "FP32", (1, 2, 1)), tensor("A", "FP32", (1, 2, 1))), "appears more than once"),
        ((tensor("C", "FP32", (1,)),), "unexpected inference input 'C'"),
        ((tensor("A", "INT32", (1, 2, 1)),), "data-type is 'INT32', but model 'm' expects 'FP32'"),
        ((tensor("A", "FP32", ()),), "needs a batch dimension"),
        ((tensor("A", "FP32", (5, 2, 1)),), "batch-size must be <= 4"),
        ((tensor("A", "FP32", (1, 3, 1)),), r"Expected \[-1, 2, -1\], got \[1, 3, 1\]"),
        ((tensor("A", "FP32", (2, 2, 1)), tensor("B", "INT32", (1, 1))), r"disagree on the batch dimension"),
        ((tensor("B", "INT32", (1, 1)),), r"missing required input\(s\) \['A'\]"),
    ],
)
def test_each_mismatch_names_the_input(check, tensors: tuple[Tensor, ...], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check(*tensors)


def test_requested_outputs_must_exist_once(check) -> None:
    with pytest.raises(InvalidArgument, match="unexpected inference output 'NOPE'"):
        check(tensor("A", "FP32", (1, 2, 1)), outputs_wanted=("NOPE",))
    with pytest.raises(InvalidArgument, match="requested more than once"):
        check(tensor("A", "FP32", (1, 2, 1)), outputs_wanted=("OUT", "OUT"))


def test_integer_parameters_are_bounded_and_not_bools() -> None:
    assert int_parameter({}, "priority", 0, 10) is None
    assert int_parameter({"priority": 3}, "priority", 0, 10) == 3
    for bad in (True, "3", 3.0, 11, -1):
        with pytest.raises(InvalidArgument, match="'priority'"):
            int_parameter({"priority": bad}, "priority", 0, 10)
