"""EngineDriver: tokens reach each request's stream in order, one event-loop wake-up per engine step."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from nereid.backends.llm.driver import EngineDriver
from nereid.backends.llm.metrics import EngineMetrics
from nereid.backends.llm.requests import EngineRequest
from nereid.server.responses import ResponseStream
from nereid.server.types import InferRequest


def test_a_steps_responses_reach_the_loop_in_one_callback(make_engine, greedy) -> None:
    engine = make_engine()
    steps = 0
    step = engine.step

    def counted_step() -> Any:
        nonlocal steps
        steps += 1
        return step()

    engine.step = counted_step  # type: ignore[method-assign]

    async def main() -> tuple[list[list[int]], int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return call_soon_threadsafe(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        driver = EngineDriver(lambda: engine, lambda: EngineMetrics("tiny-driver", "1"), "tiny-driver")
        streams = [ResponseStream(loop) for _ in range(4)]
        try:
            for i, stream in enumerate(streams):
                request = InferRequest("tiny", [], id=str(i), sender=stream)
                driver.submit(request, EngineRequest([5 + i, 6, 7], greedy(6 + i)))

            async def read(stream: ResponseStream) -> list[int]:
                return [len(r.outputs) for r in [r async for r in stream] if r.error is None]

            received = await asyncio.gather(*(read(s) for s in streams))
        finally:
            driver.stop()
        return received, wakeups

    received, wakeups = asyncio.run(main())
    assert [len(r) for r in received] == [6, 7, 8, 9]  # one streamed response per token
    assert wakeups <= steps  # not one per response (30 of them)


def test_a_failing_build_raises_in_the_caller_and_ends_the_thread() -> None:
    def build() -> Any:
        raise ValueError("KV cache of 1 blocks cannot hold one sequence")

    with pytest.raises(ValueError, match="KV cache"):
        EngineDriver(build, lambda: EngineMetrics("tiny-driver-fail", "1"), "tiny-driver-fail")
    assert not any(t.name == "tiny-driver-fail-llm-driver" for t in threading.enumerate())


def test_the_engine_is_built_and_stepped_on_the_driver_thread(make_engine, greedy) -> None:
    threads: set[int] = set()

    def build() -> Any:
        threads.add(threading.get_ident())
        engine = make_engine()
        step = engine.step

        def recorded_step() -> Any:
            threads.add(threading.get_ident())
            return step()

        engine.step = recorded_step  # type: ignore[method-assign]
        return engine

    driver = EngineDriver(build, lambda: EngineMetrics("tiny-driver-thread", "1"), "tiny-driver-thread")
    try:
        assert driver.call(lambda e: e.stats().num_kv_blocks) > 0
        driver.call(lambda e: e.add_request("x", [5, 6, 7], greedy(2)))
        driver.call(lambda e: [e.step() for _ in range(2)])
    finally:
        driver.stop()
    assert len(threads) == 1 and threading.get_ident() not in threads
