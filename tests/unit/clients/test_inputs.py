"""Request shapes, random samples and perf_analyzer-style input data files."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from nereid.clients.inputs import (
    InputDataError,
    ModelSpec,
    TensorSpec,
    load_input_data,
    parse_shape,
    random_sample,
    request_shapes,
)

ADD_SUB = ModelSpec(
    "add_sub",
    "",
    (TensorSpec("INPUT0", "FP32", (-1, 16)), TensorSpec("INPUT1", "FP32", (-1, 16))),
    (TensorSpec("OUTPUT0", "FP32", (-1, 16)),),
    max_batch_size=8,
)
VARIABLE = ModelSpec("var", "", (TensorSpec("X", "INT32", (-1, -1)), TensorSpec("S", "BYTES", (2,))), ())


def test_parse_shape():
    assert parse_shape("INPUT0:3,224,224") == ("INPUT0", (3, 224, 224))
    assert parse_shape("ns:name:4") == ("ns:name", (4,))
    assert parse_shape("SCALAR:") == ("SCALAR", ())
    for bad in ("nocolon", ":1,2", "X:a,b", "X:-1"):
        with pytest.raises(InputDataError):
            parse_shape(bad)


def test_batched_model_shapes_put_the_batch_first():
    assert request_shapes(ADD_SUB) == {"INPUT0": (1, 16), "INPUT1": (1, 16)}
    assert request_shapes(ADD_SUB, batch_size=4)["INPUT0"] == (4, 16)
    assert request_shapes(ADD_SUB, {"INPUT1": [16]}, 2)["INPUT1"] == (2, 16)


def test_batch_size_limits():
    with pytest.raises(InputDataError, match="exceeds the max_batch_size"):
        request_shapes(ADD_SUB, batch_size=9)
    with pytest.raises(InputDataError, match="does not batch"):
        request_shapes(VARIABLE, {"X": [2, 3]}, batch_size=2)


def test_variable_dims_need_a_shape():
    with pytest.raises(InputDataError, match="--shape X"):
        request_shapes(VARIABLE)
    assert request_shapes(VARIABLE, {"X": [2, 3]}) == {"X": (2, 3), "S": (2,)}
    with pytest.raises(InputDataError, match="unknown inputs"):
        request_shapes(VARIABLE, {"Y": [1]})


def test_random_sample_has_the_right_dtypes_and_shapes():
    rng = np.random.default_rng(0)
    sample = random_sample(VARIABLE, request_shapes(VARIABLE, {"X": [2, 3]}), rng)
    x, s = sample
    assert (x.name, x.datatype, x.data.dtype, x.data.shape) == ("X", "INT32", np.int32, (2, 3))
    assert s.data.dtype == object and s.data.shape == (2,)
    assert all(isinstance(v, bytes) and len(v) == 16 for v in s.data)


def test_input_data_lists_are_reshaped_and_repeated_over_the_batch(tmp_path):
    path = tmp_path / "data.json"
    values = list(range(16))
    path.write_text(json.dumps({"data": [{"INPUT0": values, "INPUT1": [1.5] * 16}]}))
    (sample,) = load_input_data(path, ADD_SUB, batch_size=3)
    assert sample[0].name == "INPUT0" and sample[0].data.shape == (3, 16)
    assert sample[0].data.dtype == np.float32
    np.testing.assert_array_equal(sample[0].data[2], np.arange(16, dtype=np.float32))


def test_input_data_content_shape_and_b64():
    raw = np.arange(6, dtype=np.int32)
    document = {
        "data": [
            {"X": {"content": [1, 2, 3, 4, 5, 6], "shape": [3, 2]}, "S": ["a", "b"]},
            {"X": {"b64": base64.b64encode(raw.tobytes()).decode(), "shape": [2, 3]}, "S": ["c", "d"]},
            {"X": [[1, 2], [3, 4]], "S": ["e", "f"]},
        ]
    }
    first, second, third = load_input_data(document, VARIABLE)
    assert first[0].data.shape == (3, 2)
    np.testing.assert_array_equal(second[0].data, raw.reshape(2, 3))
    assert third[0].data.shape == (2, 2)
    assert list(first[1].data) == [b"a", b"b"]


def test_input_data_errors_name_the_problem():
    with pytest.raises(InputDataError, match="non-empty 'data'"):
        load_input_data({"data": []}, ADD_SUB)
    with pytest.raises(InputDataError, match="missing \\['INPUT1'\\]"):
        load_input_data({"data": [{"INPUT0": [0] * 16}]}, ADD_SUB)
    with pytest.raises(InputDataError, match="do not fill shape"):
        load_input_data({"data": [{"INPUT0": [0] * 15, "INPUT1": [0] * 16}]}, ADD_SUB)
    with pytest.raises(InputDataError, match="variable shape"):
        load_input_data({"data": [{"X": [1, 2, 3, 4], "S": ["a", "b"]}]}, VARIABLE)
