"""The Stream stage's plumbing: a request's responses, from any thread to one async reader."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from nereid.server.errors import InternalError
from nereid.server.types import InferResponse

_END = object()


class _LoopSender:
    """What both senders share: a reader on ``loop``, cancellation, and delivery onto the loop.

    ``send`` may come from any thread; :meth:`_on_loop` runs a delivery at once on the loop's
    own thread and posts it there from any other.
    """

    __slots__ = ("_cancelled", "_loop", "_loop_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._cancelled = False

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

    def _on_loop(self, deliver: Callable[[Any], None], item: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            deliver(item)
        else:
            self._loop.call_soon_threadsafe(deliver, item)


class ResponseStream(_LoopSender):
    """A thread-safe :class:`~nereid.server.types.ResponseSender` read by one coroutine.

    Backends (on worker threads) and the scheduler call :meth:`send`; the front-end iterates
    with ``async for``. A final ``None`` response ends the stream without yielding anything.
    """

    __slots__ = ("_queue", "finished")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.finished = False

    def send(self, response: InferResponse | None, final: bool) -> None:
        if self.finished:
            return
        if final:
            self.finished = True
        if response is not None:
            response.final = final
            self._on_loop(self._queue.put_nowait, response)
        if final:
            self._on_loop(self._queue.put_nowait, _END)

    async def __aiter__(self) -> AsyncIterator[InferResponse]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            assert isinstance(item, InferResponse)
            yield item


class UnaryResponse(_LoopSender):
    """A :class:`~nereid.server.types.ResponseSender` for exactly one response, read by awaiting.

    The request path of ordinary models: one future, resolved once, whichever thread sends.
    """

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._future: asyncio.Future[InferResponse] = loop.create_future()

    def send(self, response: InferResponse | None, final: bool) -> None:
        if response is None:
            if not final:
                return
            response = InferResponse(error=InternalError("the model sent no response"))
        self._on_loop(self._resolve, response)

    def _resolve(self, response: InferResponse) -> None:
        if not self._future.done():
            self._future.set_result(response)

    async def wait(self) -> InferResponse:
        return await self._future
