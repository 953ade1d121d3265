"""Replicas as users run them: ``nereid serve`` processes on free loopback ports, and HAProxy.

The process and balancer helpers are bench/failover.py's, so the benchmark and the tests drive
the same code.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

_PATH = Path(__file__).resolve().parents[3] / "bench" / "failover.py"

# A Python-backend model that sleeps in execute (DELAY_S) and, optionally, in initialize (LOAD_S).
SLOW_MODEL = """
import time

import triton_python_backend_utils as pb_utils

DELAY_S = {delay_s}
LOAD_S = {load_s}


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(LOAD_S)

    def execute(self, requests):
        time.sleep(DELAY_S)
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
            )
            for r in requests
        ]
"""

SLOW_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
"""


@pytest.fixture(scope="session")
def failover() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nereid_bench_failover", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_slow_model(
    root: Path, name: str, delay_s: float, load_s: float = 0.0, max_batch_size: int = 8, extra: str = ""
) -> None:
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(SLOW_MODEL.format(delay_s=delay_s, load_s=load_s))
    (folder / "config.pbtxt").write_text(
        SLOW_CONFIG.format(name=name, max_batch_size=max_batch_size, extra=extra)
    )


@pytest.fixture(name="write_slow_model", scope="session")
def write_slow_model_fixture():
    return write_slow_model


@pytest.fixture
def replicas(failover: ModuleType, tmp_path: Path) -> Iterator[list]:
    """Replicas a test creates with ``replicas.append(failover.Replica(...))``; all stopped after."""
    started: list = []
    yield started
    for replica in started:
        replica.stop()
