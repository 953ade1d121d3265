"""Triton's PyTorch naming conventions, as pure functions."""

from __future__ import annotations

import pytest
import torch

from nereid.backends.pytorch.naming import (
    FORWARD_ARGUMENT,
    NAMED_INDEX,
    STRICT_CONFIG_ORDERING,
    Argument,
    pick_outputs,
    plan_inputs,
    plan_outputs,
)
from nereid.server.errors import InternalError, InvalidArgument

XY = [Argument("x", True), Argument("y", True)]


def test_forward_argument_names_win():
    plan = plan_inputs("m", ["y", "x"], XY)
    assert plan.convention == FORWARD_ARGUMENT and plan.positions == {"y": 1, "x": 0}
    assert plan.arguments({"x": "X", "y": "Y"}) == ["X", "Y"]


def test_named_index_any_prefix():
    plan = plan_inputs("m", ["IMAGE__1", "INPUT__0"], XY)
    assert plan.convention == NAMED_INDEX and plan.positions == {"IMAGE__1": 1, "INPUT__0": 0}
    assert plan.arguments({"INPUT__0": "a", "IMAGE__1": "b"}) == ["a", "b"]


def test_argument_names_are_checked_before_indices():
    args = [Argument("INPUT__1", True), Argument("INPUT__0", True)]
    assert plan_inputs("m", ["INPUT__0", "INPUT__1"], args).positions == {"INPUT__0": 1, "INPUT__1": 0}


@pytest.mark.parametrize("names", [["a", "b"], ["INPUT__0", "other"], ["INPUT_0", "INPUT_1"], ["__0", "__1"]])
def test_anything_else_is_config_order(names):
    plan = plan_inputs("m", names, XY)
    assert plan.convention == STRICT_CONFIG_ORDERING and plan.positions == {names[0]: 0, names[1]: 1}


def test_unknown_signature_allows_index_and_order_only():
    assert plan_inputs("m", ["x", "y"], None).convention == STRICT_CONFIG_ORDERING
    assert plan_inputs("m", ["INPUT__0"], None).convention == NAMED_INDEX


def test_duplicate_index_is_an_error():
    with pytest.raises(InvalidArgument, match="inputs 'A__0' and 'B__0' both claim forward argument 0"):
        plan_inputs("m", ["A__0", "B__0"], XY)


def test_index_beyond_the_signature_is_an_error():
    with pytest.raises(InvalidArgument, match=r"inputs \['INPUT__2'\] have no argument"):
        plan_inputs("m", ["INPUT__0", "INPUT__2"], XY)


def test_unfed_required_argument_is_an_error_but_defaults_are_fine():
    with pytest.raises(InvalidArgument, match=r"needs argument\(s\) \['y'\]"):
        plan_inputs("m", ["x"], XY)
    assert plan_inputs("m", ["x"], [Argument("x", True), Argument("y", False)]).positions == {"x": 0}


def test_missing_optional_inputs_become_none_and_trailing_ones_drop():
    plan = plan_inputs("m", ["INPUT__0", "INPUT__1", "INPUT__2"], None)
    assert plan.arguments({"INPUT__0": 1, "INPUT__2": 3}) == [1, None, 3]
    assert plan.arguments({"INPUT__0": 1}) == [1]


def test_output_plans():
    assert plan_outputs("m", ["OUTPUT__1", "OUTPUT__0"]) == {"OUTPUT__1": 1, "OUTPUT__0": 0}
    assert plan_outputs("m", ["probs", "OUTPUT__0"]) == {"probs": 0, "OUTPUT__0": 1}
    with pytest.raises(InvalidArgument, match="outputs 'A__0' and 'B__0' both claim result 0"):
        plan_outputs("m", ["A__0", "B__0"])


def test_pick_outputs_from_tensor_tuple_and_dict():
    a, b = torch.zeros(1), torch.ones(1)
    assert pick_outputs("m", a, {"OUTPUT__0": 0}, {"OUTPUT__0"})["OUTPUT__0"] is a
    assert pick_outputs("m", (a, b), {"x": 0, "y": 1}, {"y"}) == {"y": b}
    assert pick_outputs("m", [a, b], {"x": 0, "y": 1}, {"x", "y"}) == {"x": a, "y": b}
    assert pick_outputs("m", {"y": b, "x": a}, {"x": 0, "y": 1}, {"x"}) == {"x": a}


def test_pick_outputs_errors():
    with pytest.raises(InternalError, match="forward returned int; expected a tensor"):
        pick_outputs("m", 3, {"x": 0}, {"x"})
    with pytest.raises(InternalError, match="output 'y' is result 1 but forward returned 1 value"):
        pick_outputs("m", (torch.zeros(1),), {"y": 1}, {"y"})
    with pytest.raises(InternalError, match="output 'x' is a str, not a tensor"):
        pick_outputs("m", ("text",), {"x": 0}, {"x"})
    with pytest.raises(InternalError, match="forward returned a dict without output 'z'"):
        pick_outputs("m", {"x": torch.zeros(1)}, {"z": 0}, {"z"})
