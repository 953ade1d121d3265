"""The HTTP codec's bounds: refused before parsing or allocating, never a TypeError or MemoryError."""

from __future__ import annotations

import json
import time

import pytest

from nereid.server.errors import InvalidArgument
from nereid.server.http import codec


def _decode(body: dict | bytes, header_length: int | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return codec.decode_request(raw, header_length, "m", "")


@pytest.mark.parametrize("datatype", [["FP32"], {"a": 1}, 1, None])
def test_datatype_must_be_a_string(datatype) -> None:
    with pytest.raises(InvalidArgument, match="unknown datatype"):
        _decode({"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [1]}]})


def test_json_shape_is_bounded_by_the_body() -> None:
    with pytest.raises(InvalidArgument, match="cannot hold"):
        _decode({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2**40], "data": ["a"]}]})


def test_binary_bytes_count_is_bounded_before_allocating() -> None:
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "BYTES", "shape": [2**27], "parameters": {"binary_data_size": 0}}
            ]
        }
    ).encode()
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="cannot hold"):
        _decode(header, len(header))
    assert time.monotonic() - started < 0.1


def test_inputs_are_counted_before_decoding() -> None:
    inputs = [{"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [1]} for i in range(1025)]
    with pytest.raises(InvalidArgument, match="at most 1024"):
        _decode({"inputs": inputs})


def test_many_objects_are_refused_before_parsing() -> None:
    body = b'{"inputs": [' + b",".join([b"{}"] * 5000) + b"]}"
    with pytest.raises(InvalidArgument, match="objects"):
        _decode(body)


def test_braces_inside_strings_do_not_count_as_objects() -> None:
    texts = ['{"a": {"b": "}{"}}'] * 3000
    request = _decode({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [3000], "data": texts}]})
    assert request.inputs[0].data.shape == (3000,)
    escaped = ['say \\"{\\" {{'] * 3000
    request = _decode({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [3000], "data": escaped}]})
    assert request.inputs[0].data[0] == escaped[0].encode()
