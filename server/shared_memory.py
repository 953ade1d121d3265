"""Triton's system shared memory extension: client regions in ``/dev/shm``, and tensors in them.

A client creates a POSIX shared memory object, registers a window of it (key, offset,
byte_size) under a region name, then names the region in a tensor's ``shared_memory_region``,
``shared_memory_offset`` (optional, default 0) and ``shared_memory_byte_size`` parameters
instead of sending the data. Both codecs go through :func:`read_input` for an input and
:func:`place_output` for an output; :func:`output_window` checks a requested output early.

Triton has had CVEs here, so:

* client shared memory is off unless ``--allow-client-shm`` (Triton's default since 26.04);
* a key is a plain shm name: ``/dev/shm/<name>`` opened with ``O_NOFOLLOW``, a regular file,
  never a path (separators and ``..`` are refused), never the Python backend's reserved prefix;
* a window must fit the object at registration, and every tensor must fit its region's window;
* data moves with ``pread`` / ``pwrite`` on the open descriptor, never through a mapping, and the
  object's size is checked first: a client that truncates it gets an error, not a server killed
  by SIGBUS;
* unregistering a region that a request is using closes its descriptor when the request is done.

CUDA shared memory (a client's device allocation, registered by its 64-byte IPC handle) lives in
the same registry and name space, opened through :mod:`nereid.server.cuda_memory` when a GPU is
usable; every window is checked against the registered byte_size in the same place.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nereid.server.datatypes import tensor_to_raw
from nereid.server.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted, Unsupported
from nereid.server.types import Tensor

if TYPE_CHECKING:
    from nereid.server.cuda_memory import DeviceRegion, Driver

SHM_ROOT = Path("/dev/shm")
REGION, OFFSET, BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"
SHM_PARAMETERS = (REGION, OFFSET, BYTE_SIZE)
#: Triton refuses keys with the Python backend's own prefix (CVE-2025-23319).
RESERVED_KEY_PREFIX = "triton_python_backend_shm_region_"
DISABLED = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
_INT64_MAX = 2**63 - 1
#: Each region holds a descriptor open; a client must not be able to use up the server's.
MAX_REGIONS = 1024


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """One registered region, as the status APIs list it."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class CudaRegionStatus:
    """One registered CUDA region, as the CUDA status APIs list it."""

    name: str
    device_id: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class Window:
    """Where one tensor lives: ``byte_size`` bytes at ``offset`` in region ``region``."""

    region: str
    offset: int
    byte_size: int


class _Region:
    """An open shm object (``fd``) or device allocation (``device``); closed once it is
    unregistered and no request uses it."""

    __slots__ = ("closed", "device", "fd", "status", "users")

    def __init__(
        self, status: RegionStatus | CudaRegionStatus, fd: int = -1, device: DeviceRegion | None = None
    ) -> None:
        self.status, self.fd, self.device, self.users, self.closed = status, fd, device, 0, False

    @property
    def cuda(self) -> bool:
        return self.device is not None

    def release(self) -> None:
        if self.device is not None:
            self.device.close()
        else:
            os.close(self.fd)


class SharedMemoryRegistry:
    """The registered system shared memory regions; thread-safe."""

    def __init__(
        self, enabled: bool = False, root: Path = SHM_ROOT, cuda: Driver | bool | None = True
    ) -> None:
        """``cuda``: the driver to open CUDA regions with; True finds one lazily, None has none."""
        self.enabled = enabled
        self.root = root
        self._cuda = cuda
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def check_enabled(self) -> None:
        if not self.enabled:
            raise Unsupported(DISABLED)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open ``key`` and register its window [offset, offset + byte_size) as ``name``."""
        self.check_enabled()
        if not name:
            raise InvalidArgument("'region name' is necessary to register system shared memory region")
        path = self._path(name, key)
        offset = _size(offset, "offset", name)
        byte_size = _size(byte_size, "byte_size", name)
        self._reserve(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            raise InvalidArgument(f"Unable to open shared memory region: '{key}'") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(f"Unable to open shared memory region: '{key}'")
            if byte_size == 0 or offset + byte_size > info.st_size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args (offset {offset} + "
                    f"byte_size {byte_size} does not fit in the {info.st_size}-byte object '{key}')"
                )
            with self._lock:
                if name in self._regions:
                    raise AlreadyExists(f"shared memory region '{name}' already in manager")
                self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), fd)
        except BaseException:
            os.close(fd)
            raise

    def unregister(self, name: str = "") -> None:
        """Unregister ``name`` (no error when unknown, as Triton), or every region when ``name`` is ""."""
        self.check_enabled()
        self._unregister(name, cuda=False)

    def _unregister(self, name: str, cuda: bool) -> None:
        with self._lock:
            names = [name] if name else list(self._regions)
            for each in names:
                region = self._regions.get(each)
                if region is not None and region.cuda == cuda:
                    del self._regions[each]
                    region.closed = True
                    if region.users == 0:
                        region.release()

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every region, or the one named (NOT_FOUND when it is not registered)."""
        self.check_enabled()
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values() if isinstance(r.status, RegionStatus)]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        if not isinstance(region.status, RegionStatus):
            raise NotFound(
                f"The region named '{name}' is registered as CUDA shared memory, not system shared memory"
            )
        return [region.status]

    # CUDA regions: without a usable GPU nothing is ever registered as CUDA, and registering
    # answers as a Triton built without GPU support does.

    def cuda_driver(self) -> Driver | None:
        """The CUDA driver when a GPU is usable (looked up on first use), else None."""
        if self._cuda is True:
            from nereid.server.cuda_memory import driver

            self._cuda = driver()
        return None if isinstance(self._cuda, bool) else self._cuda

    def cuda_status(self, name: str = "") -> list[CudaRegionStatus]:
        """Every CUDA region, or the one named (NOT_FOUND when it is not a registered CUDA region)."""
        self.check_enabled()
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values() if isinstance(r.status, CudaRegionStatus)]
            region = self._regions.get(name)
        if region is not None and isinstance(region.status, CudaRegionStatus):
            return [region.status]
        if region is not None:
            raise NotFound(
                f"The region named '{name}' is registered as system shared memory, not CUDA shared memory"
            )
        raise NotFound(f"Unable to find cuda shared memory region: '{name}'")

    def cuda_precheck(self, name: str) -> Driver:
        """The answers a register gets before its fields are read: disabled, no name, no GPU."""
        self.check_enabled()
        if not name:
            raise InvalidArgument("'region name' is necessary to register cuda shared memory region")
        cuda = self.cuda_driver()
        if cuda is None:
            raise InvalidArgument(
                f"failed to register CUDA shared memory region: '{name}', GPUs not supported"
            )
        return cuda

    def cuda_register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Open the client's IPC handle on ``device_id`` and register its ``byte_size`` bytes as ``name``."""
        from nereid.server.cuda_memory import decode_handle

        cuda = self.cuda_precheck(name)
        handle = decode_handle(raw_handle, name)
        device_id = _size(device_id, "device_id", name)
        byte_size = _size(byte_size, "byte_size", name)
        if byte_size == 0:
            raise InvalidArgument(f"failed to register CUDA shared memory region '{name}': byte_size is 0")
        self._reserve(name)
        device = cuda.open(name, handle, device_id, byte_size)
        try:
            with self._lock:
                if name in self._regions:
                    raise AlreadyExists(f"shared memory region '{name}' already in manager")
                self._regions[name] = _Region(CudaRegionStatus(name, device_id, byte_size), device=device)
        except BaseException:
            device.close()
            raise

    def cuda_unregister(self, name: str = "") -> None:
        """Unregister CUDA region ``name`` (no error when unknown), or every CUDA region."""
        self.check_enabled()
        self._unregister(name, cuda=True)

    def _reserve(self, name: str) -> None:
        """Raise when ``name`` is taken (by either kind) or the registry is full."""
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(f"shared memory region '{name}' already in manager")
            if len(self._regions) >= MAX_REGIONS:
                raise ResourceExhausted(
                    f"cannot register shared memory region '{name}': {MAX_REGIONS} regions are registered"
                )

    def close(self) -> None:
        """Unregister everything (at shutdown)."""
        if self.enabled:
            self._unregister("", cuda=False)
            self._unregister("", cuda=True)

    @contextmanager
    def _use(self, window: Window) -> Iterator[tuple[_Region, int]]:
        """(region, absolute file offset) of ``window``, checked; the region stays open meanwhile."""
        with self._lock:
            region = self._regions.get(window.region)
            if region is None:
                raise NotFound(f"Unable to find shared memory region: '{window.region}'")
            registered = region.status.byte_size
            if window.offset >= registered:
                raise InvalidArgument(f"Invalid offset for shared memory region: '{window.region}'")
            if window.offset + window.byte_size > registered:
                raise InvalidArgument(
                    f"Invalid offset + byte size for shared memory region: '{window.region}'"
                )
            region.users += 1
        try:
            if isinstance(region.status, CudaRegionStatus):
                yield region, window.offset
                return
            start = region.status.offset + window.offset
            if os.fstat(region.fd).st_size < start + window.byte_size:
                raise InvalidArgument(
                    f"shared memory region '{window.region}': object '{region.status.key}' was truncated "
                    "below the registered size"
                )
            yield region, start
        finally:
            with self._lock:
                region.users -= 1
                if region.closed and region.users == 0:
                    region.release()

    def check(self, window: Window) -> None:
        """Raise unless ``window`` fits its region (and the region's object still holds it)."""
        with self._use(window):
            pass

    def read(self, window: Window) -> memoryview:
        """A copy of the window's bytes (read straight into one buffer)."""
        with self._use(window) as (region, start):
            if region.device is not None:
                return region.device.read(start, window.byte_size)
            fd = region.fd
            data = bytearray(window.byte_size)  # only once the window is known to fit
            view, done = memoryview(data), 0
            while done < len(data):
                got = os.preadv(fd, [view[done:]], start + done)
                if got <= 0:  # truncated between the size check and the read
                    raise InvalidArgument(
                        f"shared memory region '{window.region}' was truncated during the read"
                    )
                done += got
        return memoryview(data)

    def write(self, window: Window, data: bytes | memoryview) -> None:
        """Write ``data`` (at most the window's size) at the window's start."""
        with self._use(window) as (region, start):
            if region.device is not None:
                region.device.write(start, data)
                return
            fd, view = region.fd, memoryview(data)
            while view:
                written = os.pwrite(fd, view, start)
                if written <= 0:
                    raise InvalidArgument(f"cannot write to shared memory region '{window.region}'")
                view, start = view[written:], start + written

    def _path(self, name: str, key: str) -> Path:
        bare = key[1:] if key.startswith("/") else key
        if not bare or "/" in bare or "\\" in bare or ".." in bare or "\0" in bare or len(bare) > 255:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': key '{key[:80]}' is not a shared "
                "memory name ('/name', without path separators or '..')"
            )
        if bare.startswith(RESERVED_KEY_PREFIX):
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': the key uses a reserved prefix"
            )
        return self.root / bare


def _size(value: Any, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
        raise InvalidArgument(
            f"failed to register shared memory region '{name}': '{what}' must be a non-negative integer"
        )
    return value


def tensor_window(parameters: Mapping[str, Any], where: str) -> Window | None:
    """The window a tensor's parameters name, or None when they name no region."""
    has_region, has_size = REGION in parameters, BYTE_SIZE in parameters
    if not has_region and not has_size:
        if OFFSET in parameters:
            raise InvalidArgument(f"{where}: '{OFFSET}' needs '{REGION}' and '{BYTE_SIZE}'")
        return None
    if not (has_region and has_size):
        raise InvalidArgument(f"{where}: '{REGION}' and '{BYTE_SIZE}' must be given together")
    region = parameters[REGION]
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{where}: '{REGION}' must be a region name")
    values = []
    for key, default in ((OFFSET, 0), (BYTE_SIZE, None)):
        value = parameters.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
            raise InvalidArgument(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
        values.append(value)
    return Window(region, values[0], values[1])


def require_enabled(registry: SharedMemoryRegistry | None) -> None:
    """Raise unless client shared memory is on (a request that names a region asks for it)."""
    if registry is None or not registry.enabled:
        raise Unsupported(DISABLED)


def _tensor_window(
    registry: SharedMemoryRegistry | None, parameters: dict[str, Any], where: str
) -> Window | None:
    if not any(key in parameters for key in SHM_PARAMETERS):
        return None
    require_enabled(registry)
    window = tensor_window(parameters, where)
    for key in SHM_PARAMETERS:
        parameters.pop(key, None)
    return window


def read_input(
    registry: SharedMemoryRegistry | None, name: str, parameters: dict[str, Any]
) -> memoryview | None:
    """An input's raw bytes from its region (its shm parameters removed), or None when it has none."""
    window = _tensor_window(registry, parameters, f"input '{name}'")
    if window is None:
        return None
    assert registry is not None
    return registry.read(window)


def output_window(
    registry: SharedMemoryRegistry | None, name: str, parameters: Mapping[str, Any]
) -> Window | None:
    """The region window a requested output names, checked against the registry (None: no region)."""
    window = _tensor_window(registry, dict(parameters), f"output '{name}'")
    if window is not None:
        assert registry is not None
        registry.check(window)
    return window


def place_output(
    registry: SharedMemoryRegistry | None, tensor: Tensor, parameters: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Write an output into the region its request asked for; the response's parameters for it.

    None when the output names no region (the codec sends its data as usual).
    """
    if REGION not in parameters and BYTE_SIZE not in parameters:
        return None
    window = output_window(registry, tensor.name, parameters)
    assert registry is not None and window is not None
    raw = tensor_to_raw(tensor.datatype, tensor.data)
    if len(raw) > window.byte_size:
        raise InvalidArgument(
            f"shared memory size specified with the request for output '{tensor.name}' "
            f"({window.byte_size} bytes) should be at least {len(raw)} bytes to hold the results "
            f"(region '{window.region}')"
        )
    registry.write(window, raw)
    placed: dict[str, Any] = {REGION: window.region, BYTE_SIZE: len(raw)}
    if window.offset:
        placed[OFFSET] = window.offset
    return placed


__all__ = [
    "DISABLED",
    "SHM_PARAMETERS",
    "CudaRegionStatus",
    "RegionStatus",
    "SharedMemoryRegistry",
    "Window",
    "output_window",
    "place_output",
    "read_input",
    "require_enabled",
    "tensor_window",
]
