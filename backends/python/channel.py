"""A framed, pickled message socket between the server and a stub, able to carry descriptors.

Leaner than :class:`multiprocessing.connection.Connection` where it counts: a message leaves in
one ``sendmsg`` and small ones arrive in one ``recvmsg``, so a call costs the instance thread
two system calls -- two points where it lets go of the GIL and may wait to get it back. A
descriptor rides on the message that announces it (``SCM_RIGHTS``), so read-ahead can never
drop it. One reader and any number of writers (who must serialize their sends) per channel.
"""

from __future__ import annotations

import array
import collections
import pickle
import select
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!Q")
_CHUNK = 1 << 16
_FD_SPACE = socket.CMSG_SPACE(8 * array.array("i").itemsize)


class Channel:
    """One end of a socket pair, speaking length-prefixed pickles."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fds: collections.deque[int] = collections.deque()  # received, not yet claimed
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any, fds: tuple[int, ...] = ()) -> None:
        """Send ``message`` (and ``fds`` with it); raises OSError when the other end is gone."""
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        head = _LENGTH.pack(len(data))
        if len(data) <= _CHUNK or fds:
            frame = head + data
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            sent = self.sock.sendmsg([frame], ancillary)
            if sent < len(frame):
                self.sock.sendall(memoryview(frame)[sent:])
        else:  # large: no copy of the payload into a frame
            self.sock.sendall(head)
            self.sock.sendall(data)

    def poll(self, timeout: float | None) -> bool:
        """Whether a message (or the end of the stream) can be read within ``timeout`` seconds."""
        if timeout is None or self._complete():
            return True
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def recv(self) -> Any:
        """The next message; raises EOFError when the other end has closed."""
        while True:
            size = self._complete()
            if size:
                message = pickle.loads(memoryview(self._buffer)[_LENGTH.size : size])
                del self._buffer[:size]
                return message
            self._fill()

    def close(self) -> None:
        while self.fds:
            socket.close(self.fds.popleft())
        self.sock.close()

    def _complete(self) -> int:
        """The size of the first whole frame in the buffer, or 0."""
        if len(self._buffer) < _LENGTH.size:
            return 0
        size = _LENGTH.size + _LENGTH.unpack_from(self._buffer)[0]
        return size if len(self._buffer) >= size else 0

    def _fill(self) -> None:
        wanted = _CHUNK
        if len(self._buffer) >= _LENGTH.size:
            wanted = max(wanted, _LENGTH.size + _LENGTH.unpack_from(self._buffer)[0] - len(self._buffer))
        data, ancillary, _, _ = self.sock.recvmsg(wanted, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if not data:
            raise EOFError
        self._buffer += data
