"""The in-process instance: the model runs in the server, on the scheduler's thread for it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from nereid.backends.base import InstanceContext, Model
from nereid.backends.python import loader, runtime
from nereid.backends.python.instance import (
    ISOLATION_KEY,
    TIMEOUT_KEY,
    DirectTarget,
    InstanceSetup,
    PythonInstance,
)
from nereid.backends.python.pb_utils import InferenceRequest, InferenceResponseSender
from nereid.backends.python.runner import ExecuteError, UserModel, fail_open_senders
from nereid.server.errors import InternalError, Unavailable
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)


class InProcessInstance(PythonInstance):
    """Runs the model in the server process; see the backend's module docstring for containment."""

    def __init__(self, model: Model, setup: InstanceSetup, context: InstanceContext) -> None:
        super().__init__(model, setup, context)
        try:
            self.user = UserModel(setup.path, self.module_name)
        except loader.ModelFileError as exc:
            raise Unavailable(f"model '{setup.context.name}': {exc}") from None
        try:
            with runtime.bound(setup.bls):
                self.user.initialize(setup.args(context))
        except ExecuteError as exc:
            loader.forget_module(self.module_name)
            raise Unavailable(f"{self.label}: {exc}") from None
        self._stuck: Future[Any] | None = None

    def execute(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        timeout = self.setup.isolation.timeout_s
        if self._stuck is not None:
            if not self._stuck.done():
                raise Unavailable(
                    f"{self.label} is still running an execute() that exceeded {timeout} s; an in-process model "
                    f"cannot be interrupted (leave {ISOLATION_KEY} unset, for a stub process that is killed and restarted)"
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
        with self.timer.phase("input"):
            wrapped = [self._wrap(request) for request in requests]
        try:
            with self.timer.phase("infer"), runtime.bound(self.setup.bls):
                returned = self.user.execute(wrapped, self.setup.decoupled)
        except ExecuteError as exc:
            message = f"Failed to process the request(s) for {self.label}, message: {exc}"
            fail_open_senders(wrapped, message)
            raise InternalError(message) from None
        return self.responses(returned, requests)

    def _wrap(self, request: InferRequest) -> InferenceRequest:
        wrapped = self.setup.codec.pb_request(request)
        target = DirectTarget(self.setup.codec, request)
        wrapped._is_cancelled = target.cancelled
        if self.setup.decoupled:
            wrapped._sender = InferenceResponseSender(target)
        return wrapped

    def finalize(self) -> None:
        if self._stuck is not None and not self._stuck.done():
            log.warning("%s: finalize() skipped, an execute() that timed out is still running", self.label)
            return
        with runtime.bound(self.setup.bls):
            problem = self.user.finalize()
        if problem:
            log.error("%s: %s", self.label, problem)


def _complete(future: Future[Any], fn: Callable[..., Any], *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as exc:
        future.set_exception(exc)
