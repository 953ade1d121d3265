"""The HTTP connection's own machinery: keep-alive and the drain (one timer or flag per connection, not
per request), and responses written in one piece."""

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


async def _stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # chunked
    await send({"type": "http.response.body", "body": b"one", "more_body": True})
    await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"two"})


def test_head_requests_and_streamed_responses_are_framed_as_before() -> None:
    async def scenario() -> tuple[bytes, bytes, float]:
        listener = HttpListener(_ok, "127.0.0.1", 0, 1.0)
        port = await listener.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(REQUEST)  # the HEAD response had no body: the next one follows on the connection
        after = await reader.readuntil(b"\r\n\r\nok")
        writer.close()
        await listener.stop(1.0)
        streaming = HttpListener(_stream, "127.0.0.1", 0, 1.0)
        port = await streaming.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        started = time.monotonic()
        first = await reader.readuntil(b"one\r\n")  # the head and first chunk come before the second
        waited = time.monotonic() - started
        rest = await reader.readuntil(b"0\r\n\r\n")
        writer.close()
        await streaming.stop(1.0)
        return head + after, first + rest, waited

    head, streamed, waited = asyncio.run(scenario())
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 2" in head and head.endswith(b"\r\n\r\nok")
    assert head.count(b"HTTP/1.1 200") == 2
    assert b"transfer-encoding: chunked" in streamed and streamed.endswith(b"3\r\ntwo\r\n0\r\n\r\n")
    assert waited < 0.25


def _post(port: int, path: str, body: bytes, extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    for line in extra.split(b"\r\n"):
        if line:
            name, value = line.decode().split(": ", 1)
            headers[name] = value
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def test_infer_requests_answered_directly_match_the_router(repo: Any, start_server: Any) -> None:
    """POST .../infer skips the middleware and router (HttpFrontend.direct_app): every spelling the
    router accepts answers the same, and what is not an infer route still reaches the router."""
    import json

    repo.identity("identity")
    port = int(start_server(repo.root).http_url.rsplit(":", 1)[1])
    body = json.dumps(
        {"id": "r1", "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}]}
    ).encode()
    for path in (
        "/v2/models/identity/infer",
        "/v2/models/identity/versions/1/infer",
        "/v2/models/%69dentity/infer",  # escaped: the path is split from the raw bytes, then unquoted
        "/v2/%6Dodels/identity/infer",
    ):
        status, headers, data = _post(port, path, body, b"X-Request-Id: abc\r\n")
        assert status == 200, (path, data)
        assert json.loads(data)["outputs"][0]["data"] == [1.5, 2.5]
        assert headers["x-request-id"] == "abc" and headers["content-length"] == str(len(data))
    status, _, data = _post(port, "/v2/models/missing/infer", body)
    assert status == 404 and "missing" in json.loads(data)["error"]
    status, _, data = _post(port, "/v2/models/identity/versions/1/extra/infer", body)
    assert status == 404 and json.loads(data) == {"error": "Not Found"}
    status, _, data = _post(port, "/v2/models/identity/infer", b"{not json")
    assert status == 400 and "error" in json.loads(data)
