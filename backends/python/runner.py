"""One live ``TritonPythonModel``: initialize, execute (plain or ``async def``), finalize.

Shared by the in-process instance and the stub process, so both enforce the same rules on
what ``execute`` returns. Nothing here imports the server.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from nereid.backends.python import loader, pb_utils


class ExecuteError(Exception):
    """``execute`` raised or broke the contract; the message is ready for the client."""


class UserModel:
    """An imported model file and one instance of its ``TritonPythonModel``."""

    def __init__(self, path: Path, module_name: str) -> None:
        self.path = path
        self.module_name = module_name
        module = loader.import_model_file(path, module_name)
        try:
            cls = loader.model_class(module, path)
            self.model = cls()
        except loader.ModelFileError:
            loader.forget_module(module_name)
            raise
        except BaseException as exc:
            loader.forget_module(module_name)
            raise loader.ModelFileError(
                f"'{path}': {loader.MODEL_CLASS}() failed: {loader.describe_exception(exc, path)}"
            ) from None
        self._loop: asyncio.AbstractEventLoop | None = None

    def initialize(self, args: dict[str, str]) -> None:
        """Raises ExecuteError with the user's failure."""
        init = getattr(self.model, "initialize", None)
        if init is None:
            return
        try:
            self._settle(init(args))
        except BaseException as exc:
            raise ExecuteError(f"initialize() failed: {self.describe(exc)}") from None

    def execute(self, requests: list[pb_utils.InferenceRequest], decoupled: bool) -> list[Any] | None:
        """Run ``execute`` and check its result: one response per request, or None if decoupled."""
        try:
            result = self._settle(self.model.execute(requests))
        except BaseException as exc:
            raise ExecuteError(self.describe(exc)) from None
        return check_result(result, len(requests), decoupled)

    def finalize(self) -> str | None:
        """Call ``finalize``; returns the failure message, if any."""
        try:
            fin = getattr(self.model, "finalize", None)
            if fin is not None:
                self._settle(fin())
        except BaseException as exc:
            return f"finalize() failed: {self.describe(exc)}"
        finally:
            if self._loop is not None:
                self._loop.close()
            loader.forget_module(self.module_name)
        return None

    def describe(self, exc: BaseException) -> str:
        return loader.describe_exception(exc, self.path)

    def _settle(self, result: Any) -> Any:
        """Run a coroutine (``async def execute``) to completion on this instance's own loop."""
        if not inspect.iscoroutine(result):
            return result
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(result)


def check_result(result: Any, count: int, decoupled: bool) -> list[pb_utils.InferenceResponse] | None:
    if decoupled:
        if result is not None:
            raise ExecuteError(
                "the model is decoupled, so execute() must return None and send responses "
                "through request.get_response_sender()"
            )
        return None
    if result is None:
        raise ExecuteError(
            f"execute() returned None for {count} request(s); a model that is not decoupled must "
            "return a list with one pb_utils.InferenceResponse per request"
        )
    if not isinstance(result, list | tuple):
        raise ExecuteError(
            f"execute() returned {type(result).__name__}; expected a list of pb_utils.InferenceResponse"
        )
    if len(result) != count:
        raise ExecuteError(
            f"execute() returned {len(result)} response(s) for {count} request(s); it must "
            "return exactly one pb_utils.InferenceResponse per request"
        )
    for index, response in enumerate(result):
        if not isinstance(response, pb_utils.InferenceResponse):
            raise ExecuteError(
                f"execute() returned {type(response).__name__} at position {index}; expected "
                "pb_utils.InferenceResponse"
            )
    return list(result)


def fail_open_senders(requests: list[pb_utils.InferenceRequest], message: str) -> None:
    """End every decoupled request that has not sent its final response with ``message``."""
    error = pb_utils.TritonError(message)
    for request in requests:
        sender = request._sender
        if sender is not None:
            sender._fail(error)


def bytes_array(array: np.ndarray) -> np.ndarray:
    """A BYTES tensor as an object array of ``bytes``: ``str`` is UTF-8 encoded, other objects ``str()``-ed."""
    if array.dtype == np.object_ and all(type(x) is bytes for x in array.flat):
        return array
    out = np.empty(array.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for index, item in enumerate(array.flat):
        if isinstance(item, bytes):
            flat[index] = bytes(item)
        else:
            flat[index] = str(item).encode("utf-8")
    return out


def auto_complete(path: Path, module_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run the model class's static ``auto_complete_config`` on ``config`` (Triton's JSON form)."""
    module = loader.import_model_file(path, module_name)
    try:
        cls = loader.model_class(module, path)
        hook = getattr(cls, "auto_complete_config", None)
        if hook is None:
            return config
        given = pb_utils.ModelConfig(json.loads(json.dumps(config)))
        try:
            result = hook(given)
        except BaseException as exc:
            raise ExecuteError(
                f"auto_complete_config() failed: {loader.describe_exception(exc, path)}"
            ) from None
        if result is None:
            result = given
        if not isinstance(result, pb_utils.ModelConfig):
            raise ExecuteError(
                f"auto_complete_config() returned {type(result).__name__}; expected the "
                "pb_utils.ModelConfig it was given"
            )
        return result.as_dict()
    finally:
        loader.forget_module(module_name)
