"""Shared-memory arenas: how tensor bytes cross between the server and a stub process.

An :class:`Arena` is an anonymous memory file (``memfd_create``) mapped by both processes. The
server creates every arena and hands its descriptor to the stub over the socket; nothing is ever
named in ``/dev/shm``, so a crash on either side cannot leak one: the memory goes when the last
process holding it closes it.

Each stub has two: the *request arena* (the server writes a call's inputs, the stub reads them)
and the *response arena* (the stub writes a call's outputs, the server copies them out). One
instance runs one call at a time, so each call packs its tensors from offset 0 again. Only a
small header per tensor travels over the socket (:data:`Header`); BYTES tensors, and anything
that does not fit, travel inside the header instead (pickled, as before). The side that reads
checks every offset and size against the arena before it makes a view.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

ALIGN = 64
INITIAL_SIZE = 1 << 20
MAX_SIZE = 1 << 30  # beyond this a call's tensors travel inline instead

#: One tensor: ``(name, api datatype or None, dtype str, shape, offset, nbytes)``, or, for a
#: tensor carried inline, ``(name, api datatype or None, None, shape, -1, array)``.
Header = tuple[str, str | None, str | None, tuple[int, ...], int, Any]


#: A tensor to pack: ``(name, api datatype or None, array)``.
Named = tuple[str, str | None, np.ndarray]


class ArenaError(Exception):
    """A header points outside the arena or disagrees with itself."""


def _memory_file(size: int) -> int:
    """A descriptor of ``size`` bytes of anonymous shared memory (never named on disk)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("nereid-arena", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux: an unlinked temporary file serves the same purpose
        with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as handle:
            fd = os.dup(handle.fileno())
    os.ftruncate(fd, size)
    return fd


def bytes_needed(tensors: Sequence[Named]) -> int:
    """Arena bytes that ``tensors`` take (BYTES tensors travel inline and take none)."""
    return sum(-(-array.nbytes // ALIGN) * ALIGN for _, _, array in tensors if array.dtype.kind != "O")


def grown_size(needed: int, current: int) -> int:
    """The next power-of-two size that holds ``needed`` bytes, or 0 past :data:`MAX_SIZE`."""
    size = max(current, INITIAL_SIZE)
    while size < needed:
        size *= 2
    return size if size <= MAX_SIZE else 0


class Arena:
    """One mapping of a shared memory file; ``fd`` stays open only until the stub has it."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.fd = _memory_file(size) if fd is None else fd
        self.size = size
        self._map = mmap.mmap(self.fd, size)
        self.view = memoryview(self._map)
        self._readonly = self.view.toreadonly()  # arrays over it are read-only at no cost

    def close_fd(self) -> None:
        """Close the descriptor; the mapping stays valid (the stub holds its own)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.close_fd()
        try:
            self._readonly.release()
            self.view.release()
            self._map.close()
        except BufferError:
            pass  # an array still views it; the mapping goes when the last such array does

    # ---- writing -----------------------------------------------------------------------------

    def pack(self, tensors: Sequence[Named]) -> tuple[list[Header], int]:
        """Write ``tensors`` from offset 0; returns their headers and the bytes they needed.

        A BYTES (object) tensor is carried inline. When the tensors do not all fit, every one is
        carried inline and the size returned tells the owner how far to grow the arena.
        """
        needed = bytes_needed(tensors)
        if needed > self.size:
            return [
                (name, datatype, None, array.shape, -1, array) for name, datatype, array in tensors
            ], needed
        headers: list[Header] = []
        offset = 0
        for name, datatype, array in tensors:
            if array.dtype.kind == "O":
                headers.append((name, datatype, None, array.shape, -1, array))
                continue
            nbytes = array.nbytes
            if nbytes:
                np.ndarray(array.shape, array.dtype, self.view, offset)[...] = array
            headers.append((name, datatype, array.dtype.str, array.shape, offset, nbytes))
            offset += -(-nbytes // ALIGN) * ALIGN
        return headers, needed

    # ---- reading -----------------------------------------------------------------------------

    def array(self, header: Header, copy: bool) -> np.ndarray:
        """The tensor ``header`` describes: a read-only view into the arena, or a copy of it."""
        name, _, dtype_str, shape, offset, payload = header
        if dtype_str is None:
            if not isinstance(payload, np.ndarray):
                raise ArenaError(f"tensor '{name}': inline payload is {type(payload).__name__}, not an array")
            return payload
        dtype = np.dtype(dtype_str)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != payload or offset < 0 or offset + nbytes > self.size or min(shape, default=0) < 0:
            raise ArenaError(
                f"tensor '{name}': {payload} bytes at offset {offset} for shape {list(shape)} "
                f"{dtype} do not fit the {self.size}-byte arena"
            )
        if not nbytes:
            return np.empty(shape, dtype)
        if copy:
            return np.ndarray(shape, dtype, self.view, offset).copy()
        return np.ndarray(shape, dtype, self._readonly, offset)
