"""gRPC test fixtures: a test-only backend ("repeat_test") and models that use it.

``repeat_test`` serves two kinds of model, chosen by the config:

* decoupled (``model_transaction_policy { decoupled: true }``): INPUT0 (INT32 [1]) holds a
  count N; the instance sends N responses (OUTPUT0 = 0..N-1) from its worker thread, then an
  empty final (or, with request parameter ``inline_final: true``, final on the last one).
  N < 0 sends one error response. It stops early once the request is cancelled.
* ordinary: OUTPUT0 echoes INPUT0 of any datatype, exactly (BF16 and arbitrary BYTES too).

Both sleep ``delay_ms`` (a request parameter) per response, and record what they did in
:data:`EVENTS` so tests can see cancellation reach the backend.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from nereid.backends import registry
from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.server.errors import InvalidArgument
from nereid.server.types import InferRequest, InferResponse, Tensor


@dataclass
class BackendEvents:
    """Request ids the test backend executed, and those it saw cancelled mid-stream."""

    executed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, request_id: str) -> None:
        with self.lock:
            getattr(self, kind).append(request_id)

    def clear(self) -> None:
        with self.lock:
            self.executed.clear()
            self.cancelled.clear()


EVENTS = BackendEvents()


class RepeatInstance(ModelInstance):
    def execute(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        if self.model.config.model_transaction_policy.decoupled:
            for request in requests:
                self._repeat(request)
            return None
        return [self._echo(request) for request in requests]

    def _echo(self, request: InferRequest) -> InferResponse:
        EVENTS.record("executed", request.id)
        _sleep(request)
        tensor = request.inputs[0]
        return InferResponse(outputs=[Tensor("OUTPUT0", tensor.datatype, tensor.shape, tensor.data)])

    def _repeat(self, request: InferRequest) -> None:
        EVENTS.record("executed", request.id)
        sender = request.sender
        assert sender is not None
        count = int(request.inputs[0].data.reshape(-1)[0])
        if count < 0:
            sender.send(InferResponse(error=InvalidArgument(f"count must be >= 0, got {count}")), final=True)
            return
        inline_final = request.parameters.get("inline_final") is True
        for index in range(count):
            if sender.cancelled:
                EVENTS.record("cancelled", request.id)
                sender.send(None, final=True)
                return
            output = Tensor("OUTPUT0", "INT32", (1,), np.array([index], dtype=np.int32))
            sender.send(InferResponse(outputs=[output]), final=inline_final and index == count - 1)
            _sleep(request)
        if not (inline_final and count):
            sender.send(None, final=True)


def _sleep(request: InferRequest) -> None:
    delay = request.parameters.get("delay_ms", 0)
    if delay:
        time.sleep(delay / 1000)


class RepeatModel(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return RepeatInstance(self, context)


class RepeatTestBackend(Backend):
    def load_model(self, context: ModelContext) -> Model:
        return RepeatModel(context)


registry.register("repeat_test", RepeatTestBackend)


class TestModels:
    """Writes ``repeat_test`` models into the test's repository."""

    def __init__(self, repo) -> None:
        self.repo = repo

    def _write(self, name: str, text: str) -> None:
        folder = self.repo.config(name, f'backend: "repeat_test"\n{text}')
        (folder / "1").mkdir(exist_ok=True)

    def echo(self, name: str = "echo", datatype: str = "FP32", instances: int = 1) -> None:
        ctype = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
        self._write(
            name,
            f"""
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: {ctype} dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {ctype} dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
""",
        )

    def repeat(self, name: str = "repeat", instances: int = 2) -> None:
        self._write(
            name,
            f"""
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
model_transaction_policy {{ decoupled: true }}
""",
        )


@pytest.fixture
def models(repo) -> TestModels:
    return TestModels(repo)


@pytest.fixture
def events() -> BackendEvents:
    EVENTS.clear()
    return EVENTS
