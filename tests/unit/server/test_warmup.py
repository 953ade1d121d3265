"""Warmup samples built from a config: shapes, data kinds, BYTES as Triton builds them, and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from nereid.proto import model_config_pb2 as mc
from nereid.server.datatypes import serialize_bytes_tensor
from nereid.server.errors import InvalidArgument
from nereid.server.warmup import build_samples


def config(samples: str, max_batch_size: int = 4) -> mc.ModelConfig:
    return text_format.Parse(f"max_batch_size: {max_batch_size} model_warmup [ {samples} ]", mc.ModelConfig())


def one(name: str, data: str, datatype: str = "TYPE_FP32", dims: str = "[ 2, 3 ]", extra: str = "") -> str:
    return f'{{ name: "s" {extra} inputs {{ key: "{name}" value: {{ data_type: {datatype} dims: {dims} {data} }} }} }}'


def test_zero_and_random_data_with_and_without_a_batch_dimension(tmp_path: Path):
    [zeros] = build_samples(
        config(one("X", "zero_data: true", extra="batch_size: 3 count: 2")), tmp_path, "m"
    )
    assert (zeros.count, zeros.batch_size) == (2, 3)
    [tensor] = zeros.inputs
    assert tensor.shape == (1, 2, 3) and tensor.data.dtype == np.float32 and not tensor.data.any()
    assert len(zeros.requests("m", "1")) == 3
    [random] = build_samples(
        config(one("X", "random_data: true", "TYPE_INT64", extra="batch_size: 1"), 0), tmp_path, "m"
    )
    assert random.count == 1 and random.inputs[0].shape == (2, 3) and random.inputs[0].data.any()


@pytest.mark.parametrize("data", ["zero_data: true", "random_data: true"])
def test_bytes_zero_and_random_data_are_empty_elements(tmp_path: Path, data: str):
    [sample] = build_samples(config(one("T", data, "TYPE_STRING", "[ 2 ]", "batch_size: 1")), tmp_path, "m")
    tensor = sample.inputs[0]
    assert tensor.datatype == "BYTES" and tensor.shape == (1, 2) and list(tensor.data.ravel()) == [b"", b""]


def test_file_data_reads_the_warmup_folder(tmp_path: Path):
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "x.bin").write_bytes(np.arange(8, dtype="<i4").tobytes())  # longer is fine
    (tmp_path / "warmup" / "t.bin").write_bytes(serialize_bytes_tensor(np.array([b"a", b"bc"], dtype=object)))
    samples = (
        one("X", 'input_data_file: "x.bin"', "TYPE_INT32", "[ 2, 2 ]", "batch_size: 1")
        + ", "
        + one("T", 'input_data_file: "t.bin"', "TYPE_STRING", "[ 2 ]", "batch_size: 1")
    )
    x, t = build_samples(config(samples), tmp_path, "m")
    np.testing.assert_array_equal(x.inputs[0].data, np.arange(4, dtype=np.int32).reshape(1, 2, 2))
    assert list(t.inputs[0].data.ravel()) == [b"a", b"bc"]


@pytest.mark.parametrize(
    ("sample", "max_batch_size", "expected"),
    [
        (
            one("X", 'input_data_file: "nope.bin"', extra="batch_size: 1"),
            4,
            "input 'X': cannot read warmup file 'warmup/nope.bin'",
        ),
        (
            one("X", 'input_data_file: "../config.pbtxt"', extra="batch_size: 1"),
            4,
            "must name a file inside the model's 'warmup' folder",
        ),
        (
            one("X", "zero_data: true", dims="[ -1 ]", extra="batch_size: 1"),
            4,
            "input 'X': warmup dims must all be fixed",
        ),
        (one("X", "", extra="batch_size: 1"), 4, "input 'X': set one of zero_data"),
        (one("X", "zero_data: true", extra="batch_size: 5"), 4, "batch_size 5 is above max_batch_size 4"),
        (one("X", "zero_data: true", extra="batch_size: 2"), 0, "batch_size must be 1"),
    ],
)
def test_bad_samples_name_the_sample_and_input(
    tmp_path: Path, sample: str, max_batch_size: int, expected: str
):
    with pytest.raises(InvalidArgument, match="warmup sample 's'") as failure:
        build_samples(config(sample, max_batch_size), tmp_path, "model 'm' version 1")
    assert expected in failure.value.message and "model 'm' version 1" in failure.value.message


def test_batch_size_zero_is_skipped(tmp_path: Path):
    assert build_samples(config(one("X", "zero_data: true", extra="batch_size: 0")), tmp_path, "m") == []
