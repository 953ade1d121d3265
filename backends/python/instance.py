"""What both kinds of Python model instance share: isolation settings, setup, the base class.

:class:`PythonInstance` is the base of the in-process instance
(:mod:`~nereid.backends.python.inprocess`) and the stub-process one
(:mod:`~nereid.backends.python.isolation`); the backend picks one per model from
:class:`Isolation`. Instances get the model's shared state as an :class:`InstanceSetup`, so this
module and the two instance modules never import the backend module that creates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nereid.backends.base import InstanceContext, Model, ModelContext, ModelInstance
from nereid.backends.python import loader
from nereid.backends.python.bls import CoreBls
from nereid.backends.python.codec import Codec
from nereid.backends.python.pb_utils import InferenceResponse
from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError
from nereid.server.types import InferRequest, InferResponse

ISOLATION_KEY = "NEREID_ISOLATION"
TIMEOUT_KEY = "NEREID_EXECUTE_TIMEOUT_SECONDS"


@dataclass(frozen=True, slots=True)
class Isolation:
    """How an instance is contained; see the backend's module docstring."""

    process: bool = True  # False: in-process, the per-model opt-in for speed
    timeout_s: float = 0.0  # 0: no limit

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> Isolation:
        where = f"model '{config.name}': parameter"
        mode = (
            config.parameters[ISOLATION_KEY].string_value if ISOLATION_KEY in config.parameters else "process"
        )
        if mode not in ("none", "process"):
            raise ConfigError(f"{where} {ISOLATION_KEY} must be 'none' or 'process', got '{mode}'")
        raw = config.parameters[TIMEOUT_KEY].string_value if TIMEOUT_KEY in config.parameters else "0"
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not timeout >= 0:
            raise ConfigError(f"{where} {TIMEOUT_KEY} must be a number of seconds >= 0, got '{raw}'")
        return cls(mode == "process", timeout)


@dataclass(frozen=True, slots=True)
class InstanceSetup:
    """What every instance of one model version shares, built once by the model."""

    context: ModelContext
    path: Path  # the model file
    isolation: Isolation
    codec: Codec
    bls: CoreBls | None
    config_json: str  # ``args['model_config']``

    @property
    def decoupled(self) -> bool:
        return self.context.config.model_transaction_policy.decoupled

    def args(self, instance: InstanceContext) -> dict[str, str]:
        """The ``args`` of ``initialize``: Triton's keys, every value a string."""
        return {
            "model_config": self.config_json,
            "model_instance_kind": instance.kind.removeprefix("KIND_"),
            "model_instance_name": instance_name(instance),
            "model_instance_device_id": str(instance.device_id),
            "model_repository": str(self.context.model_dir),
            "model_version": str(self.context.version),
            "model_name": self.context.name,
        }


def instance_name(instance: InstanceContext) -> str:
    return f"{instance.name}_{instance.index}"


class PythonInstance(ModelInstance):
    """One instance of a ``model.py``; subclasses decide where its ``TritonPythonModel`` runs.

    Both kinds wrap requests with the model's codec, run ``execute`` (bounded by the
    isolation's timeout), and turn the returned ``pb_utils`` responses into Nereid responses
    here; a decoupled model's responses go out through :class:`DirectTarget` instead.
    """

    checks_outputs = True  # the codec checks and trims outputs (Codec.response)

    def __init__(self, model: Model, setup: InstanceSetup, context: InstanceContext) -> None:
        super().__init__(model, context)
        self.setup = setup
        self.label = f"model '{setup.context.name}' instance '{instance_name(context)}'"
        self.module_name = loader.module_name(setup.context.name, setup.context.version, str(context.index))

    def responses(
        self, returned: list[InferenceResponse] | None, requests: list[InferRequest]
    ) -> list[InferResponse] | None:
        """The Nereid responses for what ``execute`` returned (None for a decoupled model)."""
        if returned is None:
            return None
        codec = self.setup.codec
        with self.timer.phase("output"):
            return [codec.response(r, request) for r, request in zip(returned, requests, strict=True)]


class DirectTarget:
    """Where a decoupled request's ``pb_utils`` sender writes: the request's Nereid sender."""

    def __init__(self, codec: Codec, request: InferRequest) -> None:
        self.codec = codec
        self.request = request

    def send(self, response: InferenceResponse | None, final: bool) -> None:
        out = self.codec.response(response, self.request) if response is not None else None
        self._post(out, final)

    def cancelled(self) -> bool:
        sender = self.request.sender
        return sender is not None and sender.cancelled

    def abandon(self) -> None:
        self.fail(
            f"model '{self.codec.name}' released request '{self.request.id}' without sending a response "
            "flagged TRITONSERVER_RESPONSE_COMPLETE_FINAL"
        )

    def fail(self, message: str) -> None:
        self._post(self.codec.error_response(self.request, message), True)

    def _post(self, response: InferResponse | None, final: bool) -> None:
        if self.request.sender is not None:
            self.request.sender.send(response, final)
