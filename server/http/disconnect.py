"""Cancel work when the HTTP client goes away, so queued requests are dropped, not run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from nereid.server.errors import Cancelled

T = TypeVar("T")


class Disconnectable(Protocol):
    async def disconnected(self) -> None: ...


async def cancel_on_disconnect(request: Disconnectable, work: Awaitable[T]) -> T:
    """Await ``work``; if the client leaves first, cancel it, wait until it has unwound, and raise.

    Cancelling interrupts ``core.infer`` / ``core.stream`` where they wait, which cancels the
    request in the queue or in the backend.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(request.disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if task.cancelled():
        raise Cancelled("the client disconnected")
    return task.result()
