"""Python function calls and time per ``ModelInstance.execute`` of the add_sub ONNX model, in-process.

A noise-free proxy for per-request CPU on a busy machine: the call count does not depend on load.
Run it from two checkouts (each with its own ``nereid`` on the path) to compare a change with a
baseline, e.g.::

    git worktree add --detach /tmp/base <ref>   # baseline tree; point a venv's path at it
    python bench/execute_calls.py               # this tree
    <baseline python> bench/execute_calls.py    # the baseline tree
"""

from __future__ import annotations

import cProfile
import pstats
import time
from pathlib import Path

import numpy as np

from nereid.server.model_version import load_version
from nereid.server.repository import prepare_config
from nereid.server.types import InferRequest, Tensor

MODEL_DIR = Path(__file__).resolve().parent.parent / "model_repository" / "add_sub"


def request(rng: np.random.Generator) -> InferRequest:
    a, b = (rng.random((1, 16), dtype=np.float32) for _ in range(2))
    return InferRequest(
        "add_sub", [Tensor("INPUT0", "FP32", (1, 16), a), Tensor("INPUT1", "FP32", (1, 16), b)]
    )


def main() -> None:
    version = load_version("add_sub", 1, prepare_config(MODEL_DIR), MODEL_DIR, None)
    instance = version.instances[0]
    rng = np.random.default_rng(0)
    for size in (1, 8):
        batch = [request(rng) for _ in range(size)]
        for _ in range(200):
            instance.execute(batch)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(100):
            instance.execute(batch)
        profile.disable()
        calls = pstats.Stats(profile).total_calls / 100  # type: ignore[attr-defined]
        best = min(_time(instance.execute, batch) for _ in range(5))
        print(
            f"batch {size}: {calls:.0f} Python calls per execute, best {best / size / 1000:.1f} us per request"
        )
    version.model.finalize()


def _time(execute, batch: list[InferRequest]) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter_ns()
    for _ in range(1000):
        execute(batch)
    return (time.perf_counter_ns() - start) / 1000


if __name__ == "__main__":
    main()
