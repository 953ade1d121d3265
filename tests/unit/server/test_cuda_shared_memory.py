"""CUDA regions in the shared memory registry, without a GPU.

A fake driver stands in for :mod:`nereid.server.cuda_memory` (device memory is a bytearray with
the same ``read`` / ``write`` / ``close`` interface), so the registry's part — handle decoding,
one name space, bounds checks, deferred close — runs here; tests/gpu runs the real driver.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from nereid.server import cuda_memory
from nereid.server.errors import AlreadyExists, InvalidArgument, NotFound, Unsupported
from nereid.server.grpc.codec import encode_cuda_shm_status
from nereid.server.http.shared_memory import _raw_handle
from nereid.server.shared_memory import (
    CudaRegionStatus,
    SharedMemoryRegistry,
    Window,
    place_output,
    read_input,
)
from nereid.server.types import Tensor

HANDLE = bytes(range(64))


class FakeRegion:
    def __init__(self, byte_size: int) -> None:
        self.byte_size, self.memory, self.closed = byte_size, bytearray(byte_size), False

    def read(self, offset: int, size: int) -> memoryview:
        assert not self.closed and offset >= 0 and offset + size <= self.byte_size
        return memoryview(bytearray(self.memory[offset : offset + size]))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        assert not self.closed and offset >= 0 and offset + len(data) <= self.byte_size
        self.memory[offset : offset + len(data)] = data

    def close(self) -> None:
        assert not self.closed
        self.closed = True


class FakeDriver:
    def __init__(self) -> None:
        self.opened: dict[str, FakeRegion] = {}

    def open(self, name: str, handle: bytes, device_id: int, byte_size: int) -> FakeRegion:
        assert handle == HANDLE
        self.opened[name] = FakeRegion(byte_size)
        return self.opened[name]


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


@pytest.fixture
def registry(driver: FakeDriver, tmp_path) -> SharedMemoryRegistry:
    (tmp_path / "obj").write_bytes(bytes(256))
    made = SharedMemoryRegistry(enabled=True, root=tmp_path, cuda=driver)
    yield made
    made.close()


def test_register_status_unregister(registry: SharedMemoryRegistry, driver: FakeDriver) -> None:
    registry.cuda_register("g", HANDLE, 0, 128)
    assert registry.cuda_status() == [CudaRegionStatus("g", 0, 128)]
    assert registry.cuda_status("g") == [CudaRegionStatus("g", 0, 128)]
    assert registry.status() == []  # system status lists system regions only
    with pytest.raises(NotFound, match="'g' is registered as CUDA shared memory"):
        registry.status("g")
    registry.unregister("g")  # a system unregister leaves a CUDA region alone
    assert not driver.opened["g"].closed
    registry.cuda_unregister("g")
    assert driver.opened["g"].closed and registry.cuda_status() == []
    registry.cuda_unregister("g")  # unknown: no error, as Triton


def test_one_name_space(registry: SharedMemoryRegistry) -> None:
    registry.register("s", "/obj", 0, 64)
    with pytest.raises(AlreadyExists, match="'s' already in manager"):
        registry.cuda_register("s", HANDLE, 0, 64)
    registry.cuda_register("g", HANDLE, 0, 64)
    with pytest.raises(AlreadyExists, match="'g' already in manager"):
        registry.register("g", "/obj", 0, 64)
    with pytest.raises(NotFound, match="'s' is registered as system shared memory"):
        registry.cuda_status("s")
    registry.cuda_unregister()  # every CUDA region, no system one
    assert [r.name for r in registry.status()] == ["s"] and registry.cuda_status() == []


@pytest.mark.parametrize(
    ("handle", "device_id", "byte_size", "match"),
    [
        (b"\x00" * 63, 0, 64, "64-byte cudaIpcMemHandle_t, got 63 bytes"),
        (b"", 0, 64, "got 0 bytes"),
        (HANDLE, -1, 64, "'device_id' must be a non-negative integer"),
        (HANDLE, 0, 0, "byte_size is 0"),
        (HANDLE, 0, -5, "'byte_size' must be a non-negative integer"),
    ],
)
def test_register_refusals_name_the_region(
    registry: SharedMemoryRegistry, handle: bytes, device_id: int, byte_size: int, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match) as error:
        registry.cuda_register("bad", handle, device_id, byte_size)
    assert "'bad'" in str(error.value)
    assert registry.cuda_status() == []


def test_reads_and_writes_stay_inside_the_region(registry: SharedMemoryRegistry, driver: FakeDriver) -> None:
    registry.cuda_register("g", HANDLE, 0, 128)
    data = np.arange(16, dtype=np.float32)
    driver.opened["g"].memory[64:128] = data.tobytes()
    params = {"shared_memory_region": "g", "shared_memory_offset": 64, "shared_memory_byte_size": 64}
    assert np.array_equal(np.frombuffer(read_input(registry, "IN", dict(params)), np.float32), data)
    out = Tensor("OUT", "FP32", [16], data * 2)
    placed = place_output(registry, out, {**params, "shared_memory_offset": 0})
    assert placed == {"shared_memory_region": "g", "shared_memory_byte_size": 64}
    assert np.array_equal(np.frombuffer(driver.opened["g"].memory[:64], np.float32), data * 2)
    for offset, size, match in [
        (128, 4, "Invalid offset for shared memory region: 'g'"),
        (100, 64, "Invalid offset \\+ byte size for shared memory region: 'g'"),
        (2**62, 64, "Invalid offset for shared memory region: 'g'"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            registry.read(Window("g", offset, size))
        with pytest.raises(InvalidArgument, match=match):
            place_output(
                registry,
                Tensor("OUT", "FP32", [1], np.zeros(1, np.float32)),
                {
                    "shared_memory_region": "g",
                    "shared_memory_offset": offset,
                    "shared_memory_byte_size": size,
                },
            )
    with pytest.raises(InvalidArgument, match="should be at least 64 bytes"):
        place_output(registry, out, {"shared_memory_region": "g", "shared_memory_byte_size": 32})


def test_unregister_waits_for_users(registry: SharedMemoryRegistry, driver: FakeDriver) -> None:
    registry.cuda_register("g", HANDLE, 0, 64)
    with registry._use(Window("g", 0, 64)):
        registry.cuda_unregister("g")
        assert not driver.opened["g"].closed  # an in-flight request still copies
        with pytest.raises(NotFound):
            registry.read(Window("g", 0, 8))
    assert driver.opened["g"].closed


def test_without_a_gpu_the_answers_are_tritons(tmp_path) -> None:
    registry = SharedMemoryRegistry(enabled=True, root=tmp_path, cuda=None)
    assert registry.cuda_driver() is None and registry.cuda_status() == []
    with pytest.raises(InvalidArgument, match="'r', GPUs not supported"):
        registry.cuda_register("r", HANDLE, 0, 64)
    with pytest.raises(InvalidArgument, match="'region name' is necessary"):
        registry.cuda_register("", HANDLE, 0, 64)
    with pytest.raises(NotFound, match="Unable to find cuda shared memory region: 'r'"):
        registry.cuda_status("r")
    registry.cuda_unregister()
    off = SharedMemoryRegistry(enabled=False, cuda=None)
    with pytest.raises(Unsupported):
        off.cuda_register("r", HANDLE, 0, 64)


def test_this_machine_has_no_driver_or_a_working_one() -> None:
    found = cuda_memory.driver()
    assert found is None or isinstance(found, cuda_memory.CudaDriver)
    assert cuda_memory.driver() is found  # looked up once


def test_decode_handle() -> None:
    assert cuda_memory.decode_handle(HANDLE, "r") == HANDLE
    with pytest.raises(InvalidArgument, match="'r': raw_handle must be the 64-byte"):
        cuda_memory.decode_handle(HANDLE + b"x", "r")


def test_ipc_handle_struct_carries_the_bytes() -> None:
    import ctypes

    ipc = cuda_memory.ipc_handle(HANDLE)
    assert ctypes.sizeof(ipc) == 64 and bytes(memoryview(ipc)) == HANDLE


def test_http_raw_handle_field() -> None:
    encoded = base64.b64encode(HANDLE).decode()
    assert _raw_handle({"raw_handle": {"b64": encoded}}) == HANDLE
    for body, match in [
        ({}, "no 'raw_handle' field"),
        ({"raw_handle": encoded}, "expected an object"),
        ({"raw_handle": {"b64": 5}}, 'expected \\{"b64"'),
        ({"raw_handle": {"b64": "not base64!"}}, "not valid base64"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            _raw_handle(body)


def test_grpc_status_message() -> None:
    msg = encode_cuda_shm_status([CudaRegionStatus("g", 1, 256)])
    assert msg.regions["g"].name == "g" and msg.regions["g"].device_id == 1
    assert msg.regions["g"].byte_size == 256
