"""Ensemble fixtures: a small test backend of step models and helpers that write ensembles.

``ens_test`` models read their behaviour from the config's ``op`` parameter:

* ``add``: OUTPUT0 = INPUT0 + ``amount`` (FP32 [-1]), after sleeping ``sleep_ms``;
* ``fail``: fails every request (INVALID_ARG, message "boom from <model>");
* ``positive``: OUTPUT0 (BOOL [1]) = sum(INPUT0) > 0;
* ``repeat``: decoupled; sends INPUT0 + k for k in 0..``count``-1, one response each, then an
  empty final.

Each execute is recorded in :data:`CALLS` (model name, request id) so tests see which steps ran.
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
class Calls:
    items: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, model: str, request_id: str) -> None:
        with self.lock:
            self.items.append((model, request_id))

    def models(self) -> list[str]:
        with self.lock:
            return [m for m, _ in self.items]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


CALLS = Calls()


class _Instance(ModelInstance):
    def execute(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        context = self.model.context
        op = context.parameter("op", "add")
        sleep_ms = float(context.parameter("sleep_ms", "0") or 0)
        for request in requests:
            CALLS.add(context.name, request.id)
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        if op == "repeat":
            for request in requests:
                self._repeat(request, int(context.parameter("count", "3") or 3))
            return None
        return [self._one(op, request) for request in requests]

    def _one(self, op: str, request: InferRequest) -> InferResponse:
        data = request.inputs[0].data
        if op == "fail":
            return InferResponse(error=InvalidArgument(f"boom from {self.model.context.name}"))
        if op == "positive":
            out = np.array([float(np.sum(data)) > 0], dtype=bool)
            return InferResponse(outputs=[Tensor("OUTPUT0", "BOOL", (1,), out)])
        amount = float(self.model.context.parameter("amount", "1") or 1)
        out = (data + amount).astype(np.float32)
        return InferResponse(outputs=[Tensor("OUTPUT0", "FP32", out.shape, out)])

    def _repeat(self, request: InferRequest, count: int) -> None:
        sender = request.sender
        assert sender is not None
        data = request.inputs[0].data
        for k in range(count):
            out = (data + k).astype(np.float32)
            sender.send(InferResponse(outputs=[Tensor("OUTPUT0", "FP32", out.shape, out)]), final=False)
            time.sleep(0.01)
        sender.send(None, final=True)


class _Model(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return _Instance(self, context)


class EnsTestBackend(Backend):
    def load_model(self, context: ModelContext) -> Model:
        return _Model(context)


registry.register("ens_test", EnsTestBackend)


class Ensembles:
    """Writes ``ens_test`` step models and ensemble configs into the test's repository."""

    def __init__(self, repo) -> None:
        self.repo = repo

    def step(
        self,
        name: str,
        op: str = "add",
        amount: float = 1,
        sleep_ms: float = 0,
        out_type: str = "TYPE_FP32",
        in_type: str = "TYPE_FP32",
        count: int = 1,
        extra: str = "",
        params: dict[str, str] | None = None,
        max_batch_size: int = 0,
    ) -> None:
        values = {"op": op, "amount": str(amount), "sleep_ms": str(sleep_ms), **(params or {})}
        parameters = "\n".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
        )
        dims = "[ 1 ]" if out_type == "TYPE_BOOL" else "[ -1 ]"
        decoupled = "model_transaction_policy { decoupled: true }" if op == "repeat" else ""
        text = f"""
backend: "ens_test"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {in_type} dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {out_type} dims: {dims} }} ]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
{decoupled}
{parameters}
{extra}
"""
        self.repo.config(name, text)

    def ensemble(self, name: str, text: str, filename: str = "config.pbtxt") -> None:
        self.repo.config(name, text, filename=filename)

    @staticmethod
    def io(inputs: dict[str, str], outputs: dict[str, str]) -> str:
        """``input [...] output [...]`` for FP32 [-1] tensors (values: datatype override or "")."""

        def block(kind: str, names: dict[str, str]) -> str:
            items = ", ".join(
                f'{{ name: "{n}" data_type: {t or "TYPE_FP32"} dims: {"[ 1 ]" if t == "TYPE_BOOL" else "[ -1 ]"} }}'
                for n, t in names.items()
            )
            return f"{kind} [ {items} ]"

        return block("input", inputs) + "\n" + block("output", outputs)

    @staticmethod
    def entry(
        model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1, when: str = ""
    ) -> str:
        """One ``ensemble_scheduling.step`` entry in pbtxt."""
        ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
        outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
        return f'{{ model_name: "{model}" model_version: {version} {ins} {outs} {when} }}'

    @staticmethod
    def config(io: str, *steps: str, max_batch_size: int = 0) -> str:
        return f"""
    platform: "ensemble"
    max_batch_size: {max_batch_size}
    {io}
    ensemble_scheduling {{ step [ {", ".join(steps)} ] }}
    """


@pytest.fixture
def ens(repo) -> Ensembles:
    CALLS.clear()
    return Ensembles(repo)


@pytest.fixture
def calls() -> Calls:
    return CALLS
