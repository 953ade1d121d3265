"""The Python backend: serves Triton ``model.py`` files (``backend: "python"``) unchanged.

A model file defines ``TritonPythonModel`` with ``execute(requests)`` and optionally
``initialize(args)``, ``finalize()`` and a static ``auto_complete_config(config)``; it imports
Nereid's own :mod:`~nereid.backends.python.pb_utils` as ``triton_python_backend_utils``.

Containment of a misbehaving model
    In-process (default, ``NEREID_ISOLATION`` unset or ``"none"``): each instance is a
    separate import of the file, run on the instance's scheduler thread. An exception in
    ``execute`` -- including ``SystemExit`` -- fails that call's requests with an error naming
    the model, instance and cause, and the instance keeps serving. A contract break (wrong
    number of responses, a non-response, an output whose datatype or shape disagrees with the
    config) fails the affected requests the same way. With
    ``NEREID_EXECUTE_TIMEOUT_SECONDS`` set, a call that runs longer fails its requests on time;
    the call cannot be interrupted, so the instance answers UNAVAILABLE until it returns. A
    crash of the interpreter (``os._exit``, a segfault in native code) takes the server down:
    in-process offers no protection against that.

    Process (``parameters { key: "NEREID_ISOLATION" value: { string_value: "process" } }``):
    each instance runs in its own stub process (``python -m nereid.backends.python.stub``),
    as in Triton; ``auto_complete_config`` also runs in a short-lived stub. When the stub dies
    the in-flight requests (and open decoupled streams) fail with the exit code or signal, and
    the instance restarts in the background (``initialize`` runs again); with the timeout set
    a hung stub is killed and restarted. Tensors are pickled over a socket, so each call costs
    a copy; BLS calls are forwarded to the server. ``is_cancelled()`` is always False there,
    and the model loading API is not available.

Both parameters are read from the model config's ``parameters``.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.backends.python import loader, runtime
from nereid.backends.python.bls import CoreBls
from nereid.backends.python.codec import Codec, config_from_dict, model_config_dict
from nereid.backends.python.pb_utils import InferenceRequest, InferenceResponse, InferenceResponseSender
from nereid.backends.python.runner import ExecuteError, UserModel, auto_complete, fail_open_senders
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InternalError, Unavailable
from nereid.server.model_config import ConfigError
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

ISOLATION_KEY = "NEREID_ISOLATION"
TIMEOUT_KEY = "NEREID_EXECUTE_TIMEOUT_SECONDS"


@dataclass(frozen=True, slots=True)
class Isolation:
    """How an instance is contained; see the module docstring."""

    process: bool = False
    timeout_s: float = 0.0  # 0: no limit

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> Isolation:
        where = f"model '{config.name}': parameter"
        mode = config.parameters[ISOLATION_KEY].string_value if ISOLATION_KEY in config.parameters else "none"
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


class PythonBackend(Backend):
    default_model_filename = "model.py"

    def auto_complete_config(self, config: mc.ModelConfig, version_dir: Path) -> None:
        """Run the model's static ``auto_complete_config`` (in a stub with process isolation)."""
        path = version_dir / (config.default_model_filename or self.default_model_filename)
        if not path.is_file():
            return  # load_model reports the missing file
        if "auto_complete_config" not in path.read_text(encoding="utf-8", errors="replace"):
            return  # nothing to run: spare the import (and, with process isolation, a stub)
        isolation = Isolation.from_config(config)
        name = loader.module_name(config.name, version_dir.name, "auto_complete")
        try:
            if isolation.process:
                from nereid.backends.python.isolation import auto_complete_in_stub

                completed = auto_complete_in_stub(
                    path, name, model_config_dict(config), f"model '{config.name}'"
                )
            else:
                completed = auto_complete(path, name, model_config_dict(config))
            result = config_from_dict(completed)
        except (loader.ModelFileError, ExecuteError) as exc:
            raise ConfigError(f"model '{config.name}': {exc}") from None
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"model '{config.name}': auto_complete_config() made an invalid config: {exc}"
            ) from None
        config.CopyFrom(result)

    def load_model(self, context: ModelContext) -> Model:
        path = context.model_file
        if not path.is_file():
            raise Unavailable(f"model '{context.name}': model file '{path}' does not exist")
        return PythonModel(context, path)


class PythonModel(Model):
    def __init__(self, context: ModelContext, path: Path) -> None:
        super().__init__(context)
        self.path = path
        self.isolation = Isolation.from_config(context.config)
        self.decoupled = context.config.model_transaction_policy.decoupled
        self.codec = Codec(context.name, context.version, context.config)
        self.bls = CoreBls(context.core) if context.core is not None else None
        if self.bls is not None:
            runtime.set_default(self.bls)
        self._config_json = json.dumps(model_config_dict(context.config))

    def args(self, instance: InstanceContext) -> dict[str, str]:
        """The ``args`` of ``initialize``: Triton's keys, every value a string."""
        return {
            "model_config": self._config_json,
            "model_instance_kind": instance.kind.removeprefix("KIND_"),
            "model_instance_name": instance_name(instance),
            "model_instance_device_id": str(instance.device_id),
            "model_repository": str(self.context.model_dir),
            "model_version": str(self.context.version),
            "model_name": self.context.name,
        }

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        if self.isolation.process:
            from nereid.backends.python.isolation import ProcessInstance

            return ProcessInstance(self, context)
        return InProcessInstance(self, context)


def instance_name(instance: InstanceContext) -> str:
    return f"{instance.name}_{instance.index}"


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


class InProcessInstance(ModelInstance):
    """Runs the model in the server process, on the scheduler's thread for this instance."""

    def __init__(self, model: PythonModel, context: InstanceContext) -> None:
        super().__init__(model, context)
        self.owner = model
        self.label = f"model '{model.context.name}' instance '{instance_name(context)}'"
        tag = loader.module_name(model.context.name, model.context.version, str(context.index))
        try:
            self.user = UserModel(model.path, tag)
        except loader.ModelFileError as exc:
            raise Unavailable(f"model '{model.context.name}': {exc}") from None
        try:
            with runtime.bound(model.bls):
                self.user.initialize(model.args(context))
        except ExecuteError as exc:
            loader.forget_module(tag)
            raise Unavailable(f"{self.label}: {exc}") from None
        self._stuck: Future[Any] | None = None

    def execute(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        timeout = self.owner.isolation.timeout_s
        if self._stuck is not None:
            if not self._stuck.done():
                raise Unavailable(
                    f"{self.label} is still running an execute() that exceeded {timeout} s; an in-process model "
                    f"cannot be interrupted (set {ISOLATION_KEY} to 'process' to have it killed and restarted)"
                )
            self._stuck = None
        if not timeout:
            return self._run(requests)
        future: Future[list[InferResponse] | None] = Future()
        threading.Thread(
            target=_complete, args=(future, self._run, requests), daemon=True, name=f"{self.label} execute"
        ).start()
        try:
            return future.result(timeout)
        except FutureTimeout:
            self._stuck = future
            raise InternalError(
                f"{self.label}: execute() did not return within {timeout} s ({TIMEOUT_KEY}); its requests "
                "failed and the instance rejects new ones until that call returns"
            ) from None

    def _run(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        codec, decoupled = self.owner.codec, self.owner.decoupled
        with self.timer.phase("input"):
            wrapped = [self._wrap(request, decoupled) for request in requests]
        try:
            with self.timer.phase("infer"), runtime.bound(self.owner.bls):
                responses = self.user.execute(wrapped, decoupled)
        except ExecuteError as exc:
            message = f"Failed to process the request(s) for {self.label}, message: {exc}"
            fail_open_senders(wrapped, message)
            raise InternalError(message) from None
        if responses is None:
            return None
        with self.timer.phase("output"):
            return [codec.response(r, request) for r, request in zip(responses, requests, strict=True)]

    def _wrap(self, request: InferRequest, decoupled: bool) -> InferenceRequest:
        wrapped = self.owner.codec.pb_request(request)
        target = DirectTarget(self.owner.codec, request)
        wrapped._is_cancelled = target.cancelled
        if decoupled:
            wrapped._sender = InferenceResponseSender(target)
        return wrapped

    def finalize(self) -> None:
        if self._stuck is not None and not self._stuck.done():
            log.warning("%s: finalize() skipped, an execute() that timed out is still running", self.label)
            return
        with runtime.bound(self.owner.bls):
            problem = self.user.finalize()
        if problem:
            log.error("%s: %s", self.label, problem)


def _complete(future: Future[Any], fn: Any, *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as exc:
        future.set_exception(exc)
