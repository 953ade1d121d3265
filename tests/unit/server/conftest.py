"""Fixtures that compose: config text -> ModelConfig -> specs -> queue / batcher -> core on a loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from nereid.proto import model_config_pb2 as mc
from nereid.server.core import CoreOptions, InferenceCore
from nereid.server.model_config import TensorSpec, fill_defaults, input_specs, output_specs, parse_config_file
from nereid.server.stats import ModelStats
from nereid.server.types import InferRequest, InferResponse, Tensor

T = TypeVar("T")


@pytest.fixture
def config(tmp_path: Path) -> Callable[[str], mc.ModelConfig]:
    """Parse pbtxt text through the one config loader."""

    def parse(text: str) -> mc.ModelConfig:
        path = tmp_path / "config.pbtxt"
        path.write_text(text)
        parsed = parse_config_file(path)
        fill_defaults(parsed, "model.onnx", 1, False)
        return parsed

    return parse


def specs(config: mc.ModelConfig) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    return (
        {s.name: s for s in input_specs(config, "test")},
        {s.name: s for s in output_specs(config, "test")},
    )


def fp32_request(model: str, rows: int, width: int = 4, **kwargs: Any) -> InferRequest:
    data = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    return InferRequest(model, [Tensor("INPUT0", "FP32", data.shape, data)], **kwargs)


class Collector:
    """A ResponseSender read by no loop: records what it is sent, from any thread."""

    def __init__(self) -> None:
        self.responses: list[InferResponse] = []
        self.done = threading.Event()
        self._cancelled = False

    def send(self, response: InferResponse | None, final: bool) -> None:
        if response is not None:
            self.responses.append(response)
        if final:
            self.done.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def loop(self) -> None:
        return None


@pytest.fixture
def stats() -> ModelStats:
    return ModelStats()


class LoopThread:
    """An event loop on its own thread; ``run`` waits for a coroutine scheduled there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture
def start_core(loop_thread: LoopThread) -> Iterator[Callable[..., InferenceCore]]:
    """Start an :class:`InferenceCore` over a repository root on the fixture's loop."""
    started: list[InferenceCore] = []

    def start(root: Path, models: list[str] | None = None, **options: Any) -> InferenceCore:
        core = InferenceCore([root], CoreOptions(**options))
        loop_thread.run(core.start(models))
        started.append(core)
        return core

    yield start
    for core in started:
        loop_thread.run(core.stop())
