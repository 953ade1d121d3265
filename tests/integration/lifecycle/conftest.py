"""A test-only backend whose behaviour each version folder sets, and helpers to build versions.

``lifecycle_test``: ``OUTPUT0 = INPUT0 * factor`` where ``factor`` is read from the version
folder's ``factor`` file (default: the version number). A ``broken`` file fails the load; an
``errors`` file makes every execute raise; the ``sleep_ms`` parameter sleeps per execute.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from nereid.backends import registry
from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.server.types import InferRequest, InferResponse, Tensor


class LifecycleBackend(Backend):
    def load_model(self, context: ModelContext) -> Model:
        if (context.version_dir / "broken").exists():
            raise RuntimeError("version folder holds a 'broken' marker")
        return _Model(context)


class _Model(Model):
    def __init__(self, context: ModelContext) -> None:
        super().__init__(context)
        path = context.version_dir / "factor"
        self.factor = float(path.read_text()) if path.exists() else float(context.version)
        self.fails = (context.version_dir / "errors").exists()
        self.sleep_s = float(context.parameter("sleep_ms", "0") or 0) / 1000

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return _Instance(self, context)


class _Instance(ModelInstance):
    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        model = self.model
        assert isinstance(model, _Model)
        if model.sleep_s:
            time.sleep(model.sleep_s)
        if model.fails:
            raise RuntimeError("this version always fails")
        return [
            InferResponse(
                outputs=[Tensor("OUTPUT0", "FP32", r.inputs[0].shape, r.inputs[0].data * model.factor)]
            )
            for r in requests
        ]


registry.register("lifecycle_test", LifecycleBackend)


def lifecycle_config(extra: str = "", sleep_ms: int = 0, count: int = 1) -> str:
    return f"""
backend: "lifecycle_test"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
parameters {{ key: "sleep_ms" value: {{ string_value: "{sleep_ms}" }} }}
{extra}
"""


def routing_param(text: str) -> str:
    """A ``parameters`` entry carrying a routing section (pbtxt needs the text escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'parameters {{ key: "nereid.routing" value: {{ string_value: "{escaped}" }} }}'


def make_model(
    root: Path,
    name: str,
    versions: tuple[int, ...] = (1,),
    extra: str = "",
    sleep_ms: int = 0,
    markers: dict[int, str] | None = None,
) -> Path:
    folder = root / name
    for version in versions:
        add_version(folder, version, (markers or {}).get(version))
    (folder / "config.pbtxt").write_text(lifecycle_config(extra, sleep_ms))
    return folder


def add_version(folder: Path, version: int, marker: str | None = None, factor: float | None = None) -> None:
    path = folder / str(version)
    path.mkdir(parents=True, exist_ok=True)
    (path / "weights.bin").write_bytes(b"\0" * 64)
    if marker:
        (path / marker).write_text("")
    if factor is not None:
        (path / "factor").write_text(str(factor))


def wait_until(check, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def ones() -> np.ndarray:
    return np.ones((1, 4), dtype=np.float32)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


class Kit:
    """The helpers above, for test modules (conftest is not importable with rootdir imports)."""

    make_model = staticmethod(make_model)
    add_version = staticmethod(add_version)
    routing_param = staticmethod(routing_param)
    lifecycle_config = staticmethod(lifecycle_config)
    wait_until = staticmethod(wait_until)
    ones = staticmethod(ones)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
