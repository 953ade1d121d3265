"""CUDA shared memory regions through the CUDA driver API (``libcuda.so.1``) over ctypes.

A client allocates device memory, exports it with ``cudaIpcGetMemHandle`` and registers the
64-byte handle; the server opens it with ``cuIpcOpenMemHandle`` in the device's primary context
and copies tensors with ``cuMemcpyDtoH`` / ``cuMemcpyHtoD``. The driver library ships with every
NVIDIA driver, so no Python package is needed; without it (or without a device) :func:`driver`
answers None and the server behaves as a Triton built without GPU support.

A CUDA context is current per thread: every call here sets the region's context on the calling
thread first (``cuCtxSetCurrent``), since requests run on whatever worker thread serves them.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Protocol

from nereid.server.errors import InvalidArgument

HANDLE_SIZE = 64  # sizeof(cudaIpcMemHandle_t) == sizeof(CUipcMemHandle)
CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 0x1


class DeviceRegion(Protocol):
    """An open device allocation of ``byte_size`` bytes; callers check every window against it."""

    byte_size: int

    def read(self, offset: int, size: int) -> memoryview: ...

    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def close(self) -> None: ...


class Driver(Protocol):
    """What the registry needs of CUDA: opening a client's IPC handle on a device."""

    def open(self, name: str, handle: bytes, device_id: int, byte_size: int) -> DeviceRegion: ...


def decode_handle(raw: bytes, name: str) -> bytes:
    """The 64 bytes of a ``cudaIpcMemHandle_t`` (INVALID_ARGUMENT naming the region otherwise)."""
    if len(raw) != HANDLE_SIZE:
        raise InvalidArgument(
            f"failed to register CUDA shared memory region '{name}': raw_handle must be the "
            f"{HANDLE_SIZE}-byte cudaIpcMemHandle_t, got {len(raw)} bytes"
        )
    return bytes(raw)


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * HANDLE_SIZE)]


def ipc_handle(handle: bytes) -> _IpcHandle:
    """The ``CUipcMemHandle`` struct (passed by value) holding the 64 bytes of ``handle``."""
    return _IpcHandle.from_buffer_copy(decode_handle(handle, ""))


class CudaError(InvalidArgument):
    """A driver call failed; the message carries cuGetErrorString's text."""


class _Cuda:
    """The driver functions used here, bound once."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        ptr, size = ctypes.c_uint64, ctypes.c_size_t
        self._sig("cuInit", [ctypes.c_uint])
        self._sig("cuDeviceGetCount", [ctypes.POINTER(ctypes.c_int)])
        self._sig("cuDeviceGet", [ctypes.POINTER(ctypes.c_int), ctypes.c_int])
        self._sig("cuDevicePrimaryCtxRetain", [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int])
        self._sig("cuDevicePrimaryCtxRelease", [ctypes.c_int], "_v2")
        self._sig("cuCtxSetCurrent", [ctypes.c_void_p])
        self._sig("cuIpcOpenMemHandle", [ctypes.POINTER(ptr), _IpcHandle, ctypes.c_uint], "_v2")
        self._sig("cuIpcCloseMemHandle", [ptr])
        self._sig("cuMemcpyDtoH", [ctypes.c_void_p, ptr, size], "_v2")
        self._sig("cuMemcpyHtoD", [ptr, ctypes.c_void_p, size], "_v2")
        self._sig("cuGetErrorString", [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)])

    def _sig(self, name: str, args: list[object], suffix: str = "") -> None:
        # cuda.h maps these names to their _v2 symbols; take the versioned one where it exists.
        function = getattr(self.lib, name + suffix, None) if suffix else None
        if function is None:
            function = getattr(self.lib, name)
        function.argtypes, function.restype = args, ctypes.c_int
        setattr(self, name, function)

    def check(self, result: int, what: str) -> None:
        if result != 0:
            text = ctypes.c_char_p()
            if self.cuGetErrorString(result, ctypes.byref(text)) != 0 or not text.value:  # type: ignore[attr-defined]
                message = f"CUDA error {result}"
            else:
                message = text.value.decode(errors="replace")
            raise CudaError(f"{what}: {message}")


class _CudaRegion:
    """A client's device allocation opened from its IPC handle; closed once, at unregister."""

    def __init__(self, cuda: _Cuda, name: str, handle: bytes, device_id: int, byte_size: int) -> None:
        self.cuda, self.name, self.byte_size = cuda, name, byte_size
        where = f"failed to register CUDA shared memory region '{name}'"
        count = ctypes.c_int()
        cuda.check(cuda.cuDeviceGetCount(ctypes.byref(count)), where)  # type: ignore[attr-defined]
        if not 0 <= device_id < count.value:
            raise InvalidArgument(f"{where}: invalid device_id {device_id} ({count.value} GPUs)")
        device = ctypes.c_int()
        cuda.check(cuda.cuDeviceGet(ctypes.byref(device), device_id), where)  # type: ignore[attr-defined]
        self.device = device.value
        self.context = ctypes.c_void_p()
        cuda.check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), self.device), where)  # type: ignore[attr-defined]
        self.pointer = ctypes.c_uint64()
        try:
            self._current()
            ipc = ipc_handle(handle)
            cuda.check(
                cuda.cuIpcOpenMemHandle(  # type: ignore[attr-defined]
                    ctypes.byref(self.pointer), ipc, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
                ),
                where,
            )
        except BaseException:
            cuda.cuDevicePrimaryCtxRelease(self.device)  # type: ignore[attr-defined]
            raise

    def _current(self) -> None:
        self.cuda.check(self.cuda.cuCtxSetCurrent(self.context), f"CUDA shared memory region '{self.name}'")  # type: ignore[attr-defined]

    def read(self, offset: int, size: int) -> memoryview:
        data = bytearray(size)
        if size:
            self._current()
            buffer = (ctypes.c_char * size).from_buffer(data)
            self.cuda.check(
                self.cuda.cuMemcpyDtoH(buffer, self.pointer.value + offset, size),  # type: ignore[attr-defined]
                f"cannot read from CUDA shared memory region '{self.name}'",
            )
        return memoryview(data)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        source = bytes(data)
        if source:
            self._current()
            self.cuda.check(
                self.cuda.cuMemcpyHtoD(self.pointer.value + offset, source, len(source)),  # type: ignore[attr-defined]
                f"cannot write to CUDA shared memory region '{self.name}'",
            )

    def close(self) -> None:
        try:
            self._current()
            self.cuda.cuIpcCloseMemHandle(self.pointer)  # type: ignore[attr-defined]
        finally:
            self.cuda.cuDevicePrimaryCtxRelease(self.device)  # type: ignore[attr-defined]


class CudaDriver:
    """Opens regions with the driver API (the :class:`Driver` the server uses on a GPU machine)."""

    def __init__(self, cuda: _Cuda) -> None:
        self._cuda = cuda

    def open(self, name: str, handle: bytes, device_id: int, byte_size: int) -> DeviceRegion:
        return _CudaRegion(self._cuda, name, handle, device_id, byte_size)


_lock = threading.Lock()
_driver: list[CudaDriver | None] = []


def driver() -> CudaDriver | None:
    """The CUDA driver when ``libcuda.so.1`` loads, ``cuInit`` succeeds and a device exists; else None."""
    with _lock:
        if not _driver:
            _driver.append(_load())
        return _driver[0]


def _load() -> CudaDriver | None:
    try:
        cuda = _Cuda(ctypes.CDLL("libcuda.so.1"))
        count = ctypes.c_int()
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:  # type: ignore[attr-defined]
            return None
    except (OSError, AttributeError):
        return None
    return CudaDriver(cuda) if count.value > 0 else None


__all__ = ["HANDLE_SIZE", "CudaDriver", "DeviceRegion", "Driver", "decode_handle", "driver"]
