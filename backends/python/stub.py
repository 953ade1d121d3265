"""The stub process of an isolated Python model: ``python -m nereid.backends.python.stub FD``.

Runs one instance of a model file and answers the server over the socket ``FD`` (protocol in
:mod:`nereid.backends.python.isolation`). Commands run one at a time on the main thread; a
reader thread receives them, plus BLS results, and exits the process when the server goes
away. Imports nothing of the server.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from nereid.backends.python import pb_utils, runtime
from nereid.backends.python.loader import ModelFileError
from nereid.backends.python.runner import (
    ExecuteError,
    UserModel,
    auto_complete,
    bytes_array,
    fail_open_senders,
)

_END = object()


class StubTarget:
    """A decoupled request's sender target: every send goes to the server."""

    def __init__(self, host: StubHost, key: int) -> None:
        self.host = host
        self.key = key

    def send(self, response: pb_utils.InferenceResponse | None, final: bool) -> None:
        self.host.send(("send", self.key, None if response is None else portable(response), final))

    def cancelled(self) -> bool:
        return False

    def abandon(self) -> None:
        error = pb_utils.TritonError(
            f"{self.host.label} released a request without sending a response flagged "
            "TRITONSERVER_RESPONSE_COMPLETE_FINAL"
        )
        self.host.send(("send", self.key, pb_utils.InferenceResponse(error=error), True))


def portable(response: pb_utils.InferenceResponse) -> pb_utils.InferenceResponse:
    """A response the server can unpickle: plain tensors, BYTES as bytes objects."""
    if response.has_error():
        return pb_utils.InferenceResponse(error=response.error())
    tensors = []
    for tensor in response.output_tensors():
        if not isinstance(tensor, pb_utils.Tensor):
            error = pb_utils.TritonError(
                f"returned {type(tensor).__name__} in output_tensors; expected pb_utils.Tensor"
            )
            return pb_utils.InferenceResponse(error=error)
        array = tensor.as_numpy()
        if array.dtype.kind in "OU":
            tensor = pb_utils.Tensor(tensor.name(), bytes_array(array))
        tensors.append(tensor)
    return pb_utils.InferenceResponse(tensors, parameters=response.parameters())


class StubHost:
    """The stub's side of the connection; also the BLS runtime of the model it runs."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.label = "model"
        self.user: UserModel | None = None
        self.decoupled = False
        self._lock = threading.Lock()
        self._commands: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._calls: dict[int, queue.Queue[object]] = {}
        self._call_ids = itertools.count()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.conn.send(message)

    def serve(self) -> None:
        threading.Thread(target=self._read, daemon=True, name="stub-reader").start()
        runtime.set_default(self)
        while True:
            message = self._commands.get()
            try:
                getattr(self, f"_on_{message[0]}")(*message[1:])
            except Exception as exc:
                traceback.print_exc()
                self.send(("result", None, f"{self.label}: internal stub error: {type(exc).__name__}: {exc}"))

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone
            if message[0] in ("bls_item", "bls_end"):
                calls = self._calls.get(message[1])
                if calls is not None:
                    calls.put(message[2] if message[0] == "bls_item" else _END)
            else:
                self._commands.put(message)

    def _on_init(self, spec: dict[str, Any]) -> None:
        self.label = spec["label"]
        self.decoupled = spec["decoupled"]
        try:
            self.user = UserModel(Path(spec["path"]), spec["module_name"])
            self.user.initialize(spec["args"])
        except (ModelFileError, ExecuteError) as exc:
            self.send(("init_error", str(exc)))
            return
        self.send(("ready",))

    def _on_execute(self, items: list[tuple[int, pb_utils.InferenceRequest]]) -> None:
        assert self.user is not None
        requests = []
        for key, request in items:
            if self.decoupled:
                request._sender = pb_utils.InferenceResponseSender(StubTarget(self, key))
            requests.append(request)
        try:
            responses = self.user.execute(requests, self.decoupled)
        except ExecuteError as exc:
            message = f"Failed to process the request(s) for {self.label}, message: {exc}"
            fail_open_senders(requests, message)
            self.send(("result", None, message))
            return
        payload = None if responses is None else [portable(r) for r in responses]
        try:
            self.send(("result", payload, None))
        except Exception as exc:
            self.send(("result", None, f"{self.label}: could not pass the responses to the server: {exc}"))

    def _on_finalize(self) -> None:
        problem = self.user.finalize() if self.user is not None else None
        self.send(("finalized", problem))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _on_auto_complete(self, path: str, module_name: str, config: dict[str, Any]) -> None:
        try:
            self.send(("config", auto_complete(Path(path), module_name, config), None))
        except (ModelFileError, ExecuteError) as exc:
            self.send(("config", None, str(exc)))

    def _on_exit(self) -> None:
        os._exit(0)

    # ---- BLS runtime -----------------------------------------------------------------------

    def run(
        self, request: pb_utils.InferenceRequest, decoupled: bool
    ) -> Iterator[pb_utils.InferenceResponse]:
        call = next(self._call_ids)
        results: queue.Queue[object] = queue.Queue()
        self._calls[call] = results
        self.send(("bls", call, request, decoupled))
        return self._drain(call, results, decoupled)

    def _drain(
        self, call: int, results: queue.Queue[object], decoupled: bool
    ) -> Iterator[pb_utils.InferenceResponse]:
        got = False
        try:
            while (item := results.get()) is not _END:
                assert isinstance(item, pb_utils.InferenceResponse)
                got = True
                yield item
        finally:
            self._calls.pop(call, None)
        if not got and not decoupled:
            yield pb_utils.InferenceResponse(error=pb_utils.TritonError("the BLS request got no response"))

    def model_ready(self, name: str, version: str) -> bool:
        raise pb_utils.TritonModelException("the model loading API is not available under process isolation")

    def load_model(self, name: str, config: str) -> None:
        raise pb_utils.TritonModelException("the model loading API is not available under process isolation")

    def unload_model(self, name: str) -> None:
        raise pb_utils.TritonModelException("the model loading API is not available under process isolation")


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when the stub ends
    StubHost(Connection(int(argv[0]))).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
