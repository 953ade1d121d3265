"""Cancel work when the HTTP client goes away, so queued requests are dropped, not run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from nereid.server.errors import Cancelled
from nereid.server.http.connection import DisconnectWatch

T = TypeVar("T")


class Disconnectable(Protocol):
    @property
    def watch(self) -> DisconnectWatch | None: ...

    async def disconnected(self) -> None: ...


async def cancel_on_disconnect(request: Disconnectable, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client leaves first, cancel it and raise Cancelled.

    Cancelling interrupts ``core.infer`` / ``core.stream`` where they wait, which cancels the
    request in the queue or in the backend. Only the watcher is a separate task: the work runs
    in the caller's own task, which the watcher cancels.
    """
    task = asyncio.current_task()
    assert task is not None
    watch = request.watch
    if watch is not None:
        return await _watched(watch, task, work)
    state = {"running": True, "left": False}

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        # Runs on the loop after the watcher ends; once the work is over it changes nothing.
        if state["running"] and not watcher.cancelled() and watcher.exception() is None:
            state["left"] = True
            task.cancel()

    watcher = asyncio.ensure_future(request.disconnected())
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if state["left"]:
            task.uncancel()
            raise Cancelled("the client disconnected") from None
        raise
    finally:
        state["running"] = False
        watcher.cancel()


async def _watched(watch: DisconnectWatch, task: asyncio.Task[T], work: Awaitable[T]) -> T:
    """:func:`cancel_on_disconnect` through the connection's own callbacks: no task per request."""
    left = False

    def on_lost() -> None:
        nonlocal left
        if not left:
            left = True
            task.cancel()

    watch.add(on_lost)
    try:
        return await work
    except asyncio.CancelledError:
        if left:
            task.uncancel()
            raise Cancelled("the client disconnected") from None
        raise
    finally:
        watch.discard(on_lost)
