"""The raw HTTP/1.1 client: request bytes and response parsing, fed without a network."""

from __future__ import annotations

import asyncio

import pytest

from nereid.clients.http1 import Http1Connection, encode_request


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_encode_request():
    raw = encode_request("POST", "/v2/models/m/infer", "h:1", b"{}", {"Content-Type": "application/json"})
    assert raw == (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    assert encode_request("GET", "/v2", "h:1") == b"GET /v2 HTTP/1.1\r\nHost: h:1\r\n\r\n"


async def _connection() -> tuple[Http1Connection, FakeTransport]:
    conn = Http1Connection(asyncio.get_running_loop())
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def test_chunked_response_split_anywhere_and_keep_alive():
    async def scenario() -> None:
        conn, transport = await _connection()
        response = (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        for _ in range(2):  # the same connection serves consecutive requests
            future = conn.request(b"GET / HTTP/1.1\r\n\r\n")
            for i in range(0, len(response), 7):
                conn.data_received(response[i : i + 7])
            assert await future == (200, b"hello world")
            assert conn.reusable
        assert len(transport.written) == 2

    asyncio.run(scenario())


def test_content_length_error_status_and_connection_close():
    async def scenario() -> None:
        conn, _ = await _connection()
        future = conn.request(b"x")
        conn.data_received(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\nConnection: close\r\n\r\nerror")
        assert await future == (400, b"error")
        assert not conn.reusable

    asyncio.run(scenario())


def test_a_dropped_connection_fails_the_request():
    async def scenario() -> None:
        conn, transport = await _connection()
        future = conn.request(b"x")
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        conn.connection_lost(None)
        with pytest.raises(ConnectionError):
            await future
        assert not conn.reusable
        transport.closed = True
        with pytest.raises(ConnectionError):
            conn.request(b"y")

    asyncio.run(scenario())


def test_garbage_is_a_connection_error():
    async def scenario() -> None:
        conn, transport = await _connection()
        future = conn.request(b"x")
        conn.data_received(b"NOT HTTP AT ALL\r\n\r\n")
        with pytest.raises(ConnectionError, match="malformed"):
            await future
        assert transport.closed

    asyncio.run(scenario())
