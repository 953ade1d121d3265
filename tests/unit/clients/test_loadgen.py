"""The load engine against a fake transport: counting, errors, both load modes."""

from __future__ import annotations

import asyncio
from typing import Any

from nereid.clients.inputs import ModelSpec, Sample
from nereid.clients.loadgen import LoadOptions, measure_level
from nereid.clients.transports import InferError, Transport


class FakeTransport(Transport):
    """Answers after ``delay`` seconds; every 3rd request gets a server error, every 5th a reset."""

    protocol = "fake"

    def __init__(self, delay: float = 0.001, fail: bool = True) -> None:
        self.delay, self.fail = delay, fail
        self.sent: list[Any] = []
        self.outstanding = self.peak = 0

    async def open(self, max_connections: int) -> None:
        pass

    async def model_spec(self, model: str, version: str = "") -> ModelSpec:
        raise NotImplementedError

    def prepare(self, spec: ModelSpec, sample: Sample) -> Any:
        raise NotImplementedError

    async def infer(self, prepared: Any) -> None:
        self.sent.append(prepared)
        self.outstanding += 1
        self.peak = max(self.peak, self.outstanding)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.outstanding -= 1
        n = len(self.sent)
        if self.fail and n % 5 == 0:
            raise ConnectionResetError("reset by peer")
        if self.fail and n % 3 == 0:
            raise InferError("HTTP 400: bad input")

    async def close(self) -> None:
        pass


def test_closed_loop_counts_successes_and_errors_without_raising():
    transport = FakeTransport()
    options = LoadOptions(duration=0.3, warmup=0.05)
    row = asyncio.run(measure_level(transport, ["a", "b"], "concurrency", 4, options))
    assert row.completed > 0 and row.errors > 0
    assert set(row.error_messages) == {"HTTP 400: bad input", "ConnectionResetError: reset by peer"}
    assert row.latency is not None and row.latency.count == row.completed
    assert row.latency.min_us >= 900  # about the fake's delay, at least
    assert transport.peak == 4
    assert set(transport.sent) == {"a", "b"}  # payloads used round-robin
    assert row.client_cpu_us is not None and row.server_cpu_us is None


def test_open_loop_sends_at_the_requested_rate():
    transport = FakeTransport(fail=False)
    options = LoadOptions(duration=0.5, warmup=0.05, distribution="constant")
    row = asyncio.run(measure_level(transport, ["a"], "request_rate", 200, options))
    assert row.errors == 0
    assert 30 <= row.completed <= 150  # 100 scheduled; loose for a busy machine
    assert row.send_rate is not None and 60 <= row.send_rate <= 300


def test_open_loop_skips_sends_beyond_max_inflight():
    transport = FakeTransport(delay=0.2, fail=False)
    options = LoadOptions(duration=0.3, warmup=0.0, max_inflight=3)
    row = asyncio.run(measure_level(transport, ["a"], "request_rate", 500, options))
    assert transport.peak <= 3
    assert row.skipped > 0


def test_server_cpu_reader_is_used_per_request():
    readings = iter([1.0, 1.5])
    options = LoadOptions(duration=0.2, warmup=0.0, server_cpu=lambda: next(readings))
    row = asyncio.run(measure_level(FakeTransport(fail=False), ["a"], "concurrency", 1, options))
    assert row.server_cpu_us is not None
    assert abs(row.server_cpu_us - 0.5e6 / (row.completed + row.errors)) < 1
