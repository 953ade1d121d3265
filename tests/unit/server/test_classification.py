"""Top-N classification of one output tensor, as Triton formats it."""

from __future__ import annotations

import numpy as np
import pytest

from nereid.server.classification import class_count, classify
from nereid.server.errors import InvalidArgument
from nereid.server.model_config import TensorSpec
from nereid.server.types import RequestedOutput, Tensor


def _tensor(data: np.ndarray, datatype: str = "FP32") -> Tensor:
    return Tensor("OUT", datatype, data.shape, data)


def test_batched_rows_are_classified_each_with_labels_and_float_text() -> None:
    data = np.array([[1, 5, 10, 4], [0.5, 0.25, 0.125, 1]], dtype=np.float32)
    out = classify(_tensor(data), 2, ["a", "b", "c"], batched=True)
    assert out.datatype == "BYTES" and out.shape == (2, 2)
    assert out.data.tolist() == [[b"10.000000:2:c", b"5.000000:1:b"], [b"1.000000:3", b"0.500000:0:a"]]


def test_integers_ties_and_unbatched_outputs() -> None:
    data = np.array([3, 7, 7, np.iinfo(np.int64).min], dtype=np.int64)
    out = classify(_tensor(data, "INT64"), 10, [], batched=False)
    assert out.shape == (4,)
    assert out.data.tolist() == [b"7:1", b"7:2", b"3:0", f"{np.iinfo(np.int64).min}:3".encode()]
    unsigned = classify(_tensor(np.array([[0, 255]], dtype=np.uint8), "UINT8"), 1, [], batched=True)
    assert unsigned.data.tolist() == [[b"255:1"]]


@pytest.mark.parametrize("count", [0, -1, 2.0, "3", True, None])
def test_bad_counts_name_the_output(count) -> None:
    with pytest.raises(
        InvalidArgument, match="output 'OUT': parameter 'classification' must be a positive integer"
    ):
        class_count(RequestedOutput("OUT", {"classification": count}), TensorSpec("OUT", "FP32", (3,)))


@pytest.mark.parametrize("datatype", ["BYTES", "FP16", "BF16", "BOOL"])
def test_only_numeric_outputs_classify(datatype: str) -> None:
    with pytest.raises(InvalidArgument, match=f"unsupported type '{datatype}'"):
        class_count(RequestedOutput("OUT", {"classification": 1}), TensorSpec("OUT", datatype, (3,)))
    assert class_count(RequestedOutput("OUT", {}), TensorSpec("OUT", datatype, (3,))) is None
