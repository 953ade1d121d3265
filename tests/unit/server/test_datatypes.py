from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor as triton_deserialize
from tritonclient.utils import serialize_byte_tensor as triton_serialize

from nereid.server.datatypes import (
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
    tensor_from_raw,
    tensor_to_raw,
)
from nereid.server.errors import InvalidArgument


def test_bytes_encoding_matches_tritonclient():
    data = np.array([b"a\x00b", b"", b"\xff\xfe", "✓".encode()], dtype=object)
    ours = serialize_bytes_tensor(data)
    assert ours == triton_serialize(data).item()
    np.testing.assert_array_equal(deserialize_bytes_tensor(ours, 4), triton_deserialize(ours))


@pytest.mark.parametrize(
    "blob,count,message",
    [
        (b"\x05\x00\x00\x00abc", 1, "runs past the end"),
        (b"\x01\x00\x00\x00a", 2, "expected 2 string elements, got 1"),
        (b"\x01\x00\x00\x00a\x00\x00\x00\x00", 1, "expected 1 string elements, got 2"),
        (b"\x01\x00\x00", 1, "fewer elements"),
        (b"\x01\x00\x00\x00ab", 1, "trailing"),
    ],
)
def test_bad_bytes_tensors(blob, count, message):
    with pytest.raises(InvalidArgument, match=message):
        deserialize_bytes_tensor(blob, count)


@pytest.mark.parametrize(
    "datatype,dtype",
    [
        ("FP32", np.float32),
        ("INT64", np.int64),
        ("BOOL", np.bool_),
        ("FP16", np.float16),
        ("UINT16", np.uint16),
    ],
)
def test_raw_round_trip(datatype, dtype):
    array = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    np.testing.assert_array_equal(tensor_from_raw(datatype, (2, 3), tensor_to_raw(datatype, array)), array)


def test_raw_size_is_checked_before_use():
    with pytest.raises(InvalidArgument, match="expecting 4000000000000000000 bytes"):
        tensor_from_raw("FP32", (1_000_000_000, 1_000_000_000), b"\x00" * 8)
