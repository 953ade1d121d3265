"""The Stream stage's plumbing: a request's responses, from any thread to one async reader."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from nereid.server.errors import InternalError
from nereid.server.types import InferResponse

_END = object()


class ResponseStream:
    """A thread-safe :class:`~nereid.server.types.ResponseSender` read by one coroutine.

    Backends (on worker threads) and the scheduler call :meth:`send`; the front-end iterates
    with ``async for``. A final ``None`` response ends the stream without yielding anything.
    """

    __slots__ = ("_cancelled", "_loop", "_loop_thread", "_queue", "finished")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = False
        self.finished = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop its reader runs on: a producer with many responses may post them there at once."""
        return self._loop

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """The client went away: queued work for this request is dropped, not executed."""
        self._cancelled = True

    def send(self, response: InferResponse | None, final: bool) -> None:
        if self.finished:
            return
        if final:
            self.finished = True
        if response is not None:
            response.final = final
            self._post(response)
        if final:
            self._post(_END)

    def _post(self, item: object) -> None:
        if threading.get_ident() == self._loop_thread:
            self._queue.put_nowait(item)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def __aiter__(self) -> AsyncIterator[InferResponse]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            assert isinstance(item, InferResponse)
            yield item


class UnaryResponse:
    """A :class:`~nereid.server.types.ResponseSender` for exactly one response, read by awaiting.

    The request path of ordinary models: one future, resolved once, whichever thread sends.
    """

    __slots__ = ("_cancelled", "_future", "_loop", "_loop_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._future: asyncio.Future[InferResponse] = loop.create_future()
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    def send(self, response: InferResponse | None, final: bool) -> None:
        if response is None:
            if not final:
                return
            response = InferResponse(error=InternalError("the model sent no response"))
        if threading.get_ident() == self._loop_thread:
            self._resolve(response)
        else:
            self._loop.call_soon_threadsafe(self._resolve, response)

    def _resolve(self, response: InferResponse) -> None:
        if not self._future.done():
            self._future.set_result(response)

    async def wait(self) -> InferResponse:
        return await self._future
