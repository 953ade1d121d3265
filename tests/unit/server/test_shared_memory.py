"""The shared memory registry on real files (a tmp folder stands in for /dev/shm)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from nereid.server.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unsupported,
)
from nereid.server.shared_memory import (
    RegionStatus,
    SharedMemoryRegistry,
    Window,
    place_output,
    read_input,
    tensor_window,
)
from nereid.server.types import Tensor


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "obj").write_bytes(bytes(range(256)))
    return tmp_path


@pytest.fixture
def registry(root: Path) -> SharedMemoryRegistry:
    made = SharedMemoryRegistry(enabled=True, root=root)
    yield made
    made.close()


def test_register_status_unregister(registry: SharedMemoryRegistry) -> None:
    registry.register("a", "/obj", 16, 64)
    registry.register("b", "obj", 0, 256)
    assert registry.status("a") == [RegionStatus("a", "/obj", 16, 64)]
    assert {r.name for r in registry.status()} == {"a", "b"}
    with pytest.raises(AlreadyExists, match="'a' already in manager"):
        registry.register("a", "/obj", 0, 8)
    registry.unregister("a")
    registry.unregister("a")  # unknown: not an error, as Triton
    with pytest.raises(NotFound, match="system shared memory region: 'a'"):
        registry.status("a")
    registry.unregister()
    assert registry.status() == []


def test_the_number_of_regions_is_bounded(registry: SharedMemoryRegistry, monkeypatch) -> None:
    monkeypatch.setattr("nereid.server.shared_memory.MAX_REGIONS", 3)
    for index in range(3):
        registry.register(f"r{index}", "/obj", 0, 8)
    with pytest.raises(ResourceExhausted, match="'r3'"):
        registry.register("r3", "/obj", 0, 8)
    registry.unregister("r0")
    registry.register("r3", "/obj", 0, 8)


@pytest.mark.parametrize(
    "key",
    ["", "/", "/a/b", "../obj", "/..", "a\\b", "x\0y", "/triton_python_backend_shm_region_7", "k" * 300],
)
def test_keys_that_are_not_plain_shm_names_are_refused(registry: SharedMemoryRegistry, key: str) -> None:
    with pytest.raises(InvalidArgument, match="'r'"):
        registry.register("r", key, 0, 8)


def test_links_and_non_files_are_refused(registry: SharedMemoryRegistry, root: Path) -> None:
    (root / "link").symlink_to(root / "obj")
    (root / "folder").mkdir()
    for key in ("/link", "/folder", "/missing"):
        with pytest.raises(InvalidArgument, match=f"Unable to open shared memory region: '{key}'"):
            registry.register("r", key, 0, 8)


@pytest.mark.parametrize(("offset", "size"), [(0, 257), (250, 7), (256, 1), (0, 0), (2**63 - 1, 2), (-1, 4)])
def test_windows_outside_the_object_are_refused(
    registry: SharedMemoryRegistry, offset: int, size: int
) -> None:
    with pytest.raises(InvalidArgument, match="region 'r'"):
        registry.register("r", "/obj", offset, size)
    assert registry.status() == []


def test_reads_and_writes_stay_inside_the_window(registry: SharedMemoryRegistry, root: Path) -> None:
    registry.register("r", "/obj", 16, 32)
    assert bytes(registry.read(Window("r", 4, 4))) == bytes([20, 21, 22, 23])
    for window, message in [
        (Window("r", 32, 1), "Invalid offset for"),
        (Window("r", 30, 3), "Invalid offset \\+ byte size"),
        (Window("r", 0, 2**62), "Invalid offset \\+ byte size"),
        (Window("x", 0, 1), "Unable to find shared memory region: 'x'"),
    ]:
        with pytest.raises(ServingError, match=message):
            registry.read(window)
    registry.write(Window("r", 0, 32), b"\xff" * 32)
    data = (root / "obj").read_bytes()
    assert data[16:48] == b"\xff" * 32 and data[15] == 15 and data[48] == 48


def test_a_truncated_object_fails_without_growing_it(registry: SharedMemoryRegistry, root: Path) -> None:
    registry.register("r", "/obj", 0, 256)
    os.truncate(root / "obj", 10)
    with pytest.raises(InvalidArgument, match=r"'r'.*truncated"):
        registry.read(Window("r", 0, 64))
    with pytest.raises(InvalidArgument, match=r"'r'.*truncated"):
        registry.write(Window("r", 0, 64), b"\x00" * 64)
    assert (root / "obj").stat().st_size == 10


def test_unregister_while_requests_read_is_safe(registry: SharedMemoryRegistry, root: Path) -> None:
    stop, failures = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            try:
                assert bytes(registry.read(Window("r", 0, 4))) == bytes([0, 1, 2, 3])
            except NotFound:
                pass
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(4)]
    descriptors = len(os.listdir(f"/proc/{os.getpid()}/fd"))
    for thread in threads:
        thread.start()
    for _ in range(300):
        registry.register("r", "/obj", 0, 64)
        registry.unregister("r")
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    # Every descriptor closed again (other tests in this process hold their own, so count the change).
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) <= descriptors + 50  # a leak would be ~300


def test_tensor_parameters() -> None:
    assert tensor_window({"binary_data": True}, "input 'x'") is None
    window = {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 4}
    assert tensor_window(window, "input 'x'") == Window("r", 4, 8)
    for bad in [
        {"shared_memory_region": "r"},
        {"shared_memory_byte_size": 8},
        {"shared_memory_offset": 8},
        {"shared_memory_region": "", "shared_memory_byte_size": 8},
        {"shared_memory_region": "r", "shared_memory_byte_size": -1},
        {"shared_memory_region": "r", "shared_memory_byte_size": True},
    ]:
        with pytest.raises(InvalidArgument, match="input 'x'"):
            tensor_window(bad, "input 'x'")


def test_codec_helpers(registry: SharedMemoryRegistry, root: Path) -> None:
    registry.register("r", "/obj", 0, 64)
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 4, "other": 1}
    assert bytes(read_input(registry, "x", params) or b"") == bytes([0, 1, 2, 3])
    assert params == {"other": 1}  # the transport's parameters are not the tensor's
    assert read_input(registry, "x", {"other": 1}) is None
    out = Tensor("y", "INT32", (2,), np.array([7, 8], np.int32))
    placed = place_output(
        registry, out, {"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": 8}
    )
    assert placed == {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 8}
    assert (root / "obj").read_bytes()[8:16] == np.array([7, 8], "<i4").tobytes()
    with pytest.raises(InvalidArgument, match=r"output 'y' \(4 bytes\).*region 'r'"):
        place_output(registry, out, {"shared_memory_region": "r", "shared_memory_byte_size": 4})
    with pytest.raises(Unsupported, match="disabled"):
        read_input(None, "x", {"shared_memory_region": "r"})
