"""Shape, tensor-count and number checks that run before anything is allocated."""

from __future__ import annotations

import pytest

from nereid.server.errors import InvalidArgument
from nereid.server.validation import (
    MAX_RANK,
    MAX_TENSORS,
    check_shape,
    check_tensor_count,
    parse_ascii_int,
    raw_element_limit,
)


def test_check_shape_accepts_ordinary_shapes() -> None:
    assert check_shape("x", [2, 3], 6) == (2, 3)
    assert check_shape("x", [], 1) == ()
    assert check_shape("x", [2**62, 0], 0) == (2**62, 0)
    assert check_shape("x", [1] * MAX_RANK, 1) == (1,) * MAX_RANK


@pytest.mark.parametrize(
    ("shape", "limit", "message"),
    [
        ([1] * (MAX_RANK + 1), 10, "more than 64"),
        ([2**63], 2**70, r"below 2\^63"),
        ([-1], 10, "non-negative"),
        ([True], 10, "non-negative"),
        ([1.0], 10, "non-negative"),
        ("12", 10, "list of integers"),
        ({"a": 1}, 10, "list of integers"),
        ([4, 4], 15, "cannot hold"),
        ([2**40, 2**40, 2**40], 10**6, "cannot hold"),
    ],
)
def test_check_shape_refuses(shape, limit, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_shape("x", shape, limit)


def test_raw_element_limit() -> None:
    assert raw_element_limit("BYTES", 17) == 4
    assert raw_element_limit("FP32", 4) >= 2**62  # fixed sizes are checked exactly later


def test_tensor_count() -> None:
    check_tensor_count(MAX_TENSORS, MAX_TENSORS)
    with pytest.raises(InvalidArgument, match="at most"):
        check_tensor_count(MAX_TENSORS + 1, 0)
    with pytest.raises(InvalidArgument, match="at most"):
        check_tensor_count(0, MAX_TENSORS + 1)


@pytest.mark.parametrize("text", ["²", "1²", "٣", "", " ", "-1", "+1", "1_000", "0x10", "9" * 20])
def test_parse_ascii_int_refuses(text) -> None:
    with pytest.raises(InvalidArgument):
        parse_ascii_int(text, "value")


def test_parse_ascii_int() -> None:
    assert parse_ascii_int(" 42 ", "value") == 42
