"""A server with an identity model (dynamic batching) and tracing configured, for the Monitor tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BATCHING = "dynamic_batching { max_queue_delay_microseconds: 50000 }"


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def traced(module_repo: Any, start_module_server: Any, trace_dir: Path) -> Any:
    """Every request traced, spans also written to a JSON-lines file in ``trace_dir``."""
    module_repo.identity("identity", extra=BATCHING)
    module_repo.identity("plain")
    flags = ["level=TIMESTAMPS", "rate=1", f"file={trace_dir / 'trace.jsonl'}"]
    return start_module_server(module_repo.root, trace_config=flags)


@pytest.fixture
def spans_of() -> Callable[[Any, int], list[Any]]:
    """The exported spans of one trace of a running server (waits for the batch processor)."""

    def find(running: Any, trace_id: int) -> list[Any]:
        running.core.tracing.flush()
        return [s for s in running.core.tracing.memory.spans if s.context.trace_id == trace_id]

    return find
