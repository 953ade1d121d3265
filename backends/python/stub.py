"""The stub process of a Python model: ``python -m nereid.backends.python.stub CALL_FD ASYNC_FD``.

Runs one instance of a model file and answers the server (protocol in
:mod:`nereid.backends.python.isolation`). The main thread reads commands from the call socket
and runs them one at a time, answering on the same socket; a reader thread takes BLS results
and cancellation answers from the async socket, which model threads also use to send decoupled
responses. Either socket closing means the server is gone, and the stub exits. The model's
version folder is put on ``sys.path``, so ``model.py`` can import the modules beside it.
Imports nothing of the server.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nereid.backends.python import pb_utils, runtime
from nereid.backends.python.arena import Arena
from nereid.backends.python.channel import Channel
from nereid.backends.python.loader import ModelFileError
from nereid.backends.python.runner import ExecuteError, UserModel, auto_complete, fail_open_senders
from nereid.backends.python.wire import RequestItem, output_tensors, pack_responses, unpack_requests

_END = object()


class StubTarget:
    """A decoupled request's sender target: every send goes to the server."""

    def __init__(self, host: StubHost, key: int) -> None:
        self.host = host
        self.key = key

    def send(self, response: pb_utils.InferenceResponse | None, final: bool) -> None:
        self.host.send_async(("send", self.key, None if response is None else portable(response), final))

    def cancelled(self) -> bool:
        return self.host.cancelled(self.key)

    def abandon(self) -> None:
        error = pb_utils.TritonError(
            f"{self.host.label} released a request without sending a response flagged "
            "TRITONSERVER_RESPONSE_COMPLETE_FINAL"
        )
        self.host.send_async(("send", self.key, pb_utils.InferenceResponse(error=error), True))


def portable(response: pb_utils.InferenceResponse) -> pb_utils.InferenceResponse:
    """A response the server can unpickle: plain tensors, BYTES as bytes objects."""
    if response.has_error():
        return pb_utils.InferenceResponse(error=response.error())
    found = output_tensors(response)
    if isinstance(found, pb_utils.TritonError):
        return pb_utils.InferenceResponse(error=found)
    tensors = [pb_utils.Tensor(name, array, datatype) for name, datatype, array in found]
    return pb_utils.InferenceResponse(tensors, parameters=response.parameters())


class StubHost:
    """The stub's side of both sockets; also the BLS runtime of the model it runs."""

    def __init__(self, calls: Channel, async_conn: Channel) -> None:
        self.conn = calls
        self.async_conn = async_conn
        self.label = "model"
        self.user: UserModel | None = None
        self.decoupled = False
        self.model_name = ""
        self.version = -1
        self.arenas: dict[str, Arena] = {}
        self.async_sent = 0  # messages sent on the async socket, so a reply can say what came before it
        self._lock = threading.Lock()
        self._calls: dict[int, queue.Queue[object]] = {}
        self._call_ids = itertools.count()

    def reply(self, message: tuple[Any, ...]) -> None:
        self.conn.send((self.async_sent, message))

    def send_async(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.async_conn.send(message)
            self.async_sent += 1

    def serve(self) -> None:
        threading.Thread(target=self._read_async, daemon=True, name="stub-reader").start()
        runtime.set_default(self)
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone
            try:
                getattr(self, f"_on_{message[0]}")(*message[1:])
            except Exception as exc:
                traceback.print_exc()
                self.reply(
                    ("result", None, f"{self.label}: internal stub error: {type(exc).__name__}: {exc}", 0)
                )

    def _read_async(self) -> None:
        while True:
            try:
                message = self.async_conn.recv()
            except (EOFError, OSError):
                os._exit(0)
            calls = self._calls.get(message[1])
            if calls is not None:
                calls.put(_END if message[0] == "bls_end" else message[2])

    def _on_arena(self, which: str, size: int) -> None:
        arena = Arena(size, self.conn.fds.popleft())
        arena.close_fd()  # the mapping keeps the memory
        old = self.arenas.pop(which, None)
        if old is not None:
            old.close()
        self.arenas[which] = arena

    def _on_init(self, spec: dict[str, Any]) -> None:
        self.label = spec["label"]
        self.decoupled = spec["decoupled"]
        self.model_name, self.version = spec["model_name"], spec["version"]
        try:
            self.user = UserModel(_importable(spec["path"]), spec["module_name"])
            self.user.initialize(spec["args"])
        except (ModelFileError, ExecuteError) as exc:
            self.reply(("init_error", str(exc)))
            return
        self.reply(("ready",))

    def _on_execute(self, items: list[RequestItem]) -> None:
        assert self.user is not None
        # Inputs are copied out of the arena: a model may keep an input past execute() (a
        # decoupled model's threads, a stateful model's running total), and a view would change
        # under it when the next call reuses the arena. The copy is a memcpy from shared memory,
        # small beside the round trip; the pipe's pickling is what the arena saves.
        requests = unpack_requests(items, self.arenas["request"], self.model_name, self.version, True)
        for item, request in zip(items, requests, strict=True):
            key = item[0]
            request._is_cancelled = functools.partial(self.cancelled, key)
            if self.decoupled:
                request._sender = pb_utils.InferenceResponseSender(StubTarget(self, key))
        try:
            responses = self.user.execute(requests, self.decoupled)
        except ExecuteError as exc:
            message = f"Failed to process the request(s) for {self.label}, message: {exc}"
            fail_open_senders(requests, message)
            self.reply(("result", None, message, 0))
            return
        if responses is None:
            self.reply(("result", None, None, 0))
            return
        packed, needed = pack_responses(responses, self.arenas["response"])
        try:
            self.reply(("result", packed, None, needed))
        except Exception as exc:
            message = f"{self.label}: could not pass the responses to the server: {exc}"
            self.reply(("result", None, message, 0))

    def _on_finalize(self) -> None:
        problem = self.user.finalize() if self.user is not None else None
        self.reply(("finalized", problem))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _on_auto_complete(self, path: str, module_name: str, config: dict[str, Any]) -> None:
        try:
            self.reply(("config", auto_complete(_importable(path), module_name, config), None))
        except (ModelFileError, ExecuteError) as exc:
            self.reply(("config", None, str(exc)))

    # ---- calls to the server ---------------------------------------------------------------

    def _ask(self, message: tuple[Any, ...]) -> tuple[int, queue.Queue[object]]:
        call = next(self._call_ids)
        results: queue.Queue[object] = queue.Queue()
        self._calls[call] = results
        self.send_async((message[0], call, *message[1:]))
        return call, results

    def cancelled(self, key: int) -> bool:
        """Whether the client gave up on request ``key`` (one round trip, as in Triton)."""
        call, results = self._ask(("cancelled", key))
        try:
            return bool(results.get())
        finally:
            self._calls.pop(call, None)

    def run(
        self, request: pb_utils.InferenceRequest, decoupled: bool
    ) -> Iterator[pb_utils.InferenceResponse]:
        call, results = self._ask(("bls", request, decoupled))
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

    def metric(self, op: tuple[Any, ...]) -> Any:
        """A custom-metric operation, done by the server (one round trip, as in Triton)."""
        call, results = self._ask(("metric", op))
        try:
            answer = results.get()
        finally:
            self._calls.pop(call, None)
        assert isinstance(answer, tuple)
        if answer[0] == "error":
            raise pb_utils.TritonModelException(answer[1])
        return answer[1]

    def model_ready(self, name: str, version: str) -> bool:
        raise pb_utils.TritonModelException("the model loading API is not available under process isolation")

    def load_model(self, name: str, config: str) -> None:
        raise pb_utils.TritonModelException("the model loading API is not available under process isolation")

    def unload_model(self, name: str) -> None:
        raise pb_utils.TritonModelException("the model loading API is not available under process isolation")


def _importable(path: str) -> Path:
    """``path``, with its folder first on ``sys.path`` so that the modules beside it import (as in Triton)."""
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return Path(path)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when the stub ends
    calls, events = (socket.socket(fileno=int(fd)) for fd in argv[:2])
    StubHost(Channel(calls), Channel(events)).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
