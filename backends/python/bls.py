"""BLS in the server process: ``pb_utils.InferenceRequest.exec()`` calls the core on the server loop.

User code runs on an instance thread, so each call schedules the core coroutine on the
server's event loop and blocks that thread (never the loop) until the responses arrive.
Errors come back as error responses, as in Triton. A model that calls itself with a single
instance waits forever, also as in Triton.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from nereid.backends.python import pb_utils
from nereid.backends.python.codec import infer_request, pb_response, triton_error
from nereid.server.errors import ServingError
from nereid.server.model_config import config_from_dict
from nereid.server.types import CoreHandle, InferRequest

T = TypeVar("T")

_END = object()
_POLL_S = 1.0  # how often a waiting BLS call checks that the server loop still runs
_NO_SERVER = "BLS needs a running server"


def _error(message: str, code: int = pb_utils.TritonError.INTERNAL) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class CoreBls:
    """A :class:`~nereid.backends.python.runtime.BlsRuntime` over the core that loaded the model.

    Without a core (None), every call fails as it does while the server is not running.
    """

    def __init__(self, core: CoreHandle | None) -> None:
        self.core = core

    def run(
        self, request: pb_utils.InferenceRequest, decoupled: bool
    ) -> Iterator[pb_utils.InferenceResponse]:
        try:
            loop = self._loop()
            target = infer_request(request)
        except ServingError as exc:
            return iter([pb_utils.InferenceResponse(error=triton_error(exc))])
        except pb_utils.TritonModelException as exc:
            return iter([_error(exc.message(), pb_utils.TritonError.UNAVAILABLE)])
        if not decoupled:
            return iter([self._infer(loop, target)])
        items: queue.Queue[object] = queue.Queue()
        asyncio.run_coroutine_threadsafe(self._pump(target, items), loop)
        return _drain(items, loop)

    def _infer(self, loop: asyncio.AbstractEventLoop, target: InferRequest) -> pb_utils.InferenceResponse:
        try:
            return pb_response(
                _wait(asyncio.run_coroutine_threadsafe(self._core().infer(target), loop), loop)
            )
        except pb_utils.TritonModelException as exc:
            return _error(exc.message(), pb_utils.TritonError.UNAVAILABLE)
        except ServingError as exc:
            return pb_utils.InferenceResponse(error=triton_error(exc))
        except Exception as exc:
            return _error(f"BLS request to model '{target.model_name}' failed: {type(exc).__name__}: {exc}")

    async def _pump(self, target: InferRequest, items: queue.Queue[object]) -> None:
        try:
            async for response in self._core().stream(target):
                items.put(pb_response(response))
        except ServingError as exc:
            items.put(pb_utils.InferenceResponse(error=triton_error(exc)))
        except Exception as exc:
            items.put(
                _error(f"BLS request to model '{target.model_name}' failed: {type(exc).__name__}: {exc}")
            )
        finally:
            items.put(_END)

    def model_ready(self, name: str, version: str) -> bool:
        core = self._core()

        async def ready() -> bool:  # on the loop: the core's state belongs to it
            return core.model_ready(name, version)

        return self._call(ready())

    def load_model(self, name: str, config: str) -> None:
        core = self._core()
        try:
            override = (
                config_from_dict(json.loads(config), f"load_model('{name}') config") if config else None
            )
        except ValueError as exc:  # not JSON at all
            raise pb_utils.TritonModelException(f"load_model('{name}') config is not JSON: {exc}") from None
        except ServingError as exc:
            raise pb_utils.TritonModelException(exc.message) from None
        self._call(core.load_model(name, override))

    def unload_model(self, name: str) -> None:
        self._call(self._core().unload_model(name))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            loop = self._loop()
        except pb_utils.TritonModelException:
            coro.close()
            raise
        try:
            return _wait(asyncio.run_coroutine_threadsafe(coro, loop), loop)
        except ServingError as exc:
            raise pb_utils.TritonModelException(exc.message) from None

    def _core(self) -> CoreHandle:
        if self.core is None:
            raise pb_utils.TritonModelException(_NO_SERVER)
        return self.core

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._core().loop
        if loop is None or loop.is_closed() or not loop.is_running():
            raise pb_utils.TritonModelException(_NO_SERVER)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise pb_utils.TritonModelException("exec() would block the server's event loop")
        return loop


def _wait(future: Future[T], loop: asyncio.AbstractEventLoop) -> T:
    """The future's result; gives up if the server loop stops first (its work would never run)."""
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            if not loop.is_running():
                future.cancel()
                raise pb_utils.TritonModelException(
                    "the server stopped before the BLS request finished"
                ) from None


def _drain(
    items: queue.Queue[object], loop: asyncio.AbstractEventLoop
) -> Iterator[pb_utils.InferenceResponse]:
    while True:
        try:
            item = items.get(timeout=_POLL_S)
        except queue.Empty:
            if loop.is_running():
                continue
            yield _error(
                "the server stopped before the BLS request finished", pb_utils.TritonError.UNAVAILABLE
            )
            return
        if item is _END:
            return
        assert isinstance(item, pb_utils.InferenceResponse)
        yield item
