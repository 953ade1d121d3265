"""The HTTP connection's own timers: keep-alive and the drain, one per connection, not per request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nereid.server.http.server import HttpListener

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _listener(keep_alive: float) -> tuple[HttpListener, int]:
    listener = HttpListener(_ok, "127.0.0.1", 0, 1.0)
    listener._server.config.timeout_keep_alive = keep_alive  # type: ignore[attr-defined]
    return listener, await listener.start()


def test_a_busy_connection_stays_open_and_an_idle_one_closes_after_keep_alive() -> None:
    async def scenario() -> tuple[list[bytes], float, bytes]:
        listener, port = await _listener(keep_alive=1.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        for _ in range(3):  # 1.8 s of traffic, never idle for 1 s: the connection's timer re-arms
            writer.write(REQUEST)
            replies.append(await reader.read(1000))
            await asyncio.sleep(0.6)
        started = time.monotonic()
        last = await reader.read(1000)  # b"" once the server closes the idle connection
        idle = time.monotonic() - started + 0.6
        writer.close()
        await listener.stop(1.0)
        return replies, idle, last

    replies, idle, last = asyncio.run(scenario())
    assert all(reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nok") for reply in replies)
    assert last == b""
    assert 0.9 < idle < 3.0


def test_drain_closes_each_connection_after_its_next_response() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        listener, port = await _listener(keep_alive=30.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        before = await reader.read(1000)
        listener.drain()
        writer.write(REQUEST)
        after = await reader.read(1000)
        closed = await reader.read(1000)
        writer.close()
        await listener.stop(1.0)
        return before, after + closed

    before, after = asyncio.run(scenario())
    assert b"connection: close" not in before.lower()
    assert b"connection: close" in after.lower() and after.endswith(b"ok")
