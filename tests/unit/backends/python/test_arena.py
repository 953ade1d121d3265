"""Shared-memory arenas, the wire format of an execute call, and the stub channel."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest

from nereid.backends.python import pb_utils
from nereid.backends.python.arena import INITIAL_SIZE, Arena, ArenaError, bytes_needed, grown_size
from nereid.backends.python.channel import Channel
from nereid.backends.python.wire import pack_responses, unpack_requests, unpack_responses

# Every Triton datatype as the backend carries it: (API datatype or None, numpy array).
SAMPLES = [
    ("BOOL", np.array([True, False, True])),
    ("UINT8", np.arange(5, dtype=np.uint8)),
    ("UINT16", np.arange(5, dtype=np.uint16)),
    ("UINT32", np.arange(5, dtype=np.uint32)),
    ("UINT64", np.array([2**63 + 1, 0], dtype=np.uint64)),
    ("INT8", np.array([-128, 127], dtype=np.int8)),
    ("INT16", np.array([-3, 3], dtype=np.int16)),
    ("INT32", np.arange(-3, 3, dtype=np.int32).reshape(2, 3)),
    ("INT64", np.array([-(2**62)], dtype=np.int64)),
    ("FP16", np.array([0.5, -1.25], dtype=np.float16)),
    ("FP32", np.linspace(0, 1, 7, dtype=np.float32)),
    ("FP64", np.array([np.pi], dtype=np.float64)),
    ("BF16", np.array([0x3F80, 0xC000], dtype=np.uint16)),  # 1.0, -2.0 as bfloat16 bits
    ("BYTES", np.array([b"a", b"", b"\xff\x00"], dtype=np.object_)),
    ("FP32", np.zeros((0, 4), dtype=np.float32)),  # empty
    ("BYTES", np.zeros((2, 0), dtype=np.object_)),  # empty BYTES
]


def _named(samples=SAMPLES):
    return [(f"T{i}", datatype, array) for i, (datatype, array) in enumerate(samples)]


@pytest.fixture
def arena():
    made = Arena(INITIAL_SIZE)
    yield made
    made.close()


def test_every_datatype_round_trips_through_the_arena(arena: Arena):
    headers, needed = arena.pack(_named())
    assert needed == bytes_needed(_named()) <= arena.size
    for (name, datatype, array), header in zip(_named(), headers, strict=True):
        assert header[:2] == (name, datatype)
        for copy in (False, True):
            back = arena.array(header, copy)
            assert back.dtype == array.dtype and back.shape == array.shape
            np.testing.assert_array_equal(back, array)
    inline = [h for h in headers if h[4] == -1]
    assert [h[0] for h in inline] == ["T13", "T15"]  # BYTES travels in the header


def test_views_are_read_only_and_copies_survive_the_next_call(arena: Arena):
    data = np.arange(4, dtype=np.float32)
    (header,), _ = arena.pack([("X", None, data)])
    view, copy = arena.array(header, False), arena.array(header, True)
    with pytest.raises(ValueError):
        view[0] = 9
    arena.pack([("Y", None, np.full(4, 7, np.float32))])  # the next call reuses offset 0
    assert view.tolist() == [7, 7, 7, 7] and copy.tolist() == [0, 1, 2, 3]


def test_tensors_over_the_arena_size_travel_inline_and_say_how_much_they_need():
    small = Arena(INITIAL_SIZE)
    try:
        big = np.ones(INITIAL_SIZE // 4 + 1, np.float32)
        headers, needed = small.pack([("BIG", "FP32", big), ("S", None, np.ones(2, np.int8))])
        assert needed > small.size and all(h[4] == -1 for h in headers)
        np.testing.assert_array_equal(small.array(headers[0], False), big)
        assert grown_size(needed, small.size) == 2 * INITIAL_SIZE
        assert grown_size(1 << 40, small.size) == 0  # past the cap: stays inline
    finally:
        small.close()


def test_headers_that_point_outside_the_arena_are_refused(arena: Arena):
    (header,), _ = arena.pack([("X", None, np.ones(4, np.float32))])
    name, datatype, dtype, shape, offset, nbytes = header
    for bad in (
        (name, datatype, dtype, shape, arena.size - 8, nbytes),  # runs past the end
        (name, datatype, dtype, shape, -64, nbytes),
        (name, datatype, dtype, (5,), offset, nbytes),  # shape disagrees with the size
        (name, datatype, dtype, (-1, -4), offset, nbytes),
        (name, datatype, None, shape, -1, b"not an array"),
    ):
        with pytest.raises(ArenaError, match="tensor 'X'"):
            arena.array(bad, False)


def test_requests_and_responses_cross_with_their_fields(arena: Arena):
    headers, _ = arena.pack(_named(SAMPLES[:3]))
    items = [(7, "r1", 42, 1, '{"a": 1}', ["OUT"], headers[:2]), (8, "r2", 0, 0, "{}", [], headers[2:])]
    first, second = unpack_requests(items, arena, "m", 3, copy=False)
    assert (first.request_id(), first.correlation_id(), first.parameters()) == ("r1", 42, '{"a": 1}')
    assert (first.flags(), second.flags()) == (1, 0)
    assert first.requested_output_names() == ["OUT"] and first.model_version() == 3
    assert [t.name() for t in first.inputs()] == ["T0", "T1"] and first.inputs()[0].datatype() == "BOOL"
    assert second.inputs()[0].as_numpy().tolist() == [0, 1, 2, 3, 4]

    out = Arena(INITIAL_SIZE)
    try:
        responses = [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor(n, a, d) for n, d, a in _named()], parameters={"k": 1}
            ),
            pb_utils.InferenceResponse(error=pb_utils.TritonError("bad", pb_utils.TritonError.INVALID_ARG)),
            pb_utils.InferenceResponse([pb_utils.Tensor("S", np.array(["é"]))]),  # str: sent as UTF-8
            pb_utils.InferenceResponse(["not a tensor"]),  # type: ignore[list-item]
        ]
        packed, needed = pack_responses(responses, out)
        assert needed <= out.size
        ok, failed, text, broken = unpack_responses(packed, out)
        for tensor, (_, datatype, array) in zip(ok.output_tensors(), _named(), strict=True):
            assert tensor.datatype() == datatype
            np.testing.assert_array_equal(tensor.as_numpy(), array)
        assert ok.parameters() == '{"k": 1}'
        assert failed.error().message() == "bad" and failed.error().code_name() == "INVALID_ARG"
        assert text.output_tensors()[0].as_numpy().tolist() == ["é".encode()]
        assert "expected pb_utils.Tensor" in broken.error().message()
    finally:
        out.close()


def test_the_channel_carries_messages_of_any_size_and_descriptors():
    left, right = socket.socketpair()
    sender, receiver = Channel(left), Channel(right)
    try:
        read_end, write_end = os.pipe()
        big = np.arange(300_000, dtype=np.int64)
        sender.send(("small", 1))
        sender.send(("fd",), (write_end,))
        writer = threading.Thread(target=sender.send, args=(("big", big),))  # larger than the socket buffer
        writer.start()
        os.close(write_end)
        assert receiver.recv() == ("small", 1)
        assert receiver.recv() == ("fd",)
        passed = receiver.fds.popleft()
        os.write(passed, b"hi")
        os.close(passed)
        assert os.read(read_end, 2) == b"hi"
        os.close(read_end)
        assert receiver.poll(0) or receiver.poll(5)
        _kind, array = receiver.recv()
        np.testing.assert_array_equal(array, big)
        writer.join()
        sender.close()
        with pytest.raises(EOFError):
            receiver.recv()
    finally:
        receiver.close()
