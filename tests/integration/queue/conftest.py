"""A test-only backend that sleeps per execute and records each batch it ran."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from nereid.backends import registry
from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.server.types import InferRequest, InferResponse, Tensor

BATCHES: list[list[str]] = []  # request ids of each execute, in order
_lock = threading.Lock()


class SleepBackend(Backend):
    """``OUTPUT0 = INPUT0``; sleeps ``sleep_ms`` per execute whatever the batch size.

    A request whose INPUT0 holds a negative number makes the whole execute raise.
    """

    def load_model(self, context: ModelContext) -> Model:
        return _SleepModel(context)


class _SleepModel(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return _SleepInstance(self, context)


class _SleepInstance(ModelInstance):
    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        with _lock:
            BATCHES.append([r.id for r in requests])
        time.sleep(float(self.model.context.parameter("sleep_ms", "5") or 5) / 1000)
        if any(np.any(r.inputs[0].data < 0) for r in requests):
            raise RuntimeError("negative input poisons the batch")
        return [
            InferResponse(outputs=[Tensor("OUTPUT0", "FP32", r.inputs[0].shape, r.inputs[0].data.copy())])
            for r in requests
        ]


registry.register("sleep_test", SleepBackend)


def _sleep_config(sleep_ms: int, extra: str, max_batch_size: int = 32, count: int = 1) -> str:
    return f"""
backend: "sleep_test"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
parameters {{ key: "sleep_ms" value: {{ string_value: "{sleep_ms}" }} }}
{extra}
"""


@pytest.fixture
def batches() -> list[list[str]]:
    BATCHES.clear()
    return BATCHES


@pytest.fixture
def sleep_config():
    """Config text for a ``sleep_test`` model: ``sleep_config(sleep_ms, extra, max_batch_size, count)``."""
    return _sleep_config
