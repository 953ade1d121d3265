"""Process isolation, server side: one stub process per instance, restarted when it dies or hangs.

Parent and stub exchange pickled tuples over a socket pair (the stub's stdout and stderr stay
the server's, so ``print`` in a model still shows up in the server log):

    parent -> stub   ("init", spec) | ("execute", [(key, request)]) | ("finalize",)
                     ("auto_complete", path, module_name, config) | ("bls_item", call, response)
                     ("bls_end", call)
    stub -> parent   ("ready",) | ("init_error", message) | ("result", responses | None, error | None)
                     ("send", key, response | None, final) | ("bls", call, request, decoupled)
                     ("finalized", problem | None) | ("config", config | None, error | None)

A reader thread per stub routes decoupled ``send`` messages and BLS calls as they come and
hands every other message to the instance thread waiting in :meth:`StubProcess.call`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from nereid.backends.base import InstanceContext, Model
from nereid.backends.python import pb_utils
from nereid.backends.python.bls import CoreBls
from nereid.backends.python.instance import DirectTarget, InstanceSetup, PythonInstance
from nereid.backends.python.runner import ExecuteError
from nereid.server.errors import InternalError, ServingError, Unavailable
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

STUB_MODULE = "nereid.backends.python.stub"
FINALIZE_TIMEOUT_S = 30.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class StubProcess:
    """One stub process, its connection, and the thread that reads what it sends."""

    def __init__(self, label: str, bls: CoreBls | None) -> None:
        self.label = label
        self.bls = bls
        self.open: dict[int, DirectTarget] = {}
        self.replies: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.exit_code: int | None = None
        self.dead = threading.Event()
        self._lock = threading.Lock()
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", STUB_MODULE, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"nereid-stub-{self.proc.pid}")
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> bool:
        try:
            with self._lock:
                self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def call(self, message: tuple[Any, ...], timeout: float | None) -> tuple[Any, ...]:
        """Send ``message`` and wait for the reply: ``("timeout",)`` or ``("dead", code)`` on failure."""
        self.send(message)  # a dead stub is reported by the reader
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            return ("timeout",)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:
                log.exception("%s: unreadable message from the stub process; killing it", self.label)
                self.kill()
                break
            kind = message[0]
            if kind == "send":
                self._deliver(*message[1:])
            elif kind == "bls":
                threading.Thread(target=self._serve_bls, args=message[1:], daemon=True).start()
            else:
                self.replies.put(message)
        try:
            self.exit_code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self.conn.close()
        self.dead.set()
        message = (
            f"{self.label}: the Python stub process exited unexpectedly ({describe_exit(self.exit_code)})"
        )
        for key in list(self.open):
            target = self.open.pop(key, None)
            if target is not None:
                target.fail(message)
        self.replies.put(("dead", self.exit_code))

    def _deliver(self, key: int, response: pb_utils.InferenceResponse | None, final: bool) -> None:
        target = self.open.pop(key, None) if final else self.open.get(key)
        if target is not None:
            target.send(response, final)

    def _serve_bls(self, call: int, request: pb_utils.InferenceRequest, decoupled: bool) -> None:
        try:
            if self.bls is None:
                error = pb_utils.TritonError("BLS is not available here", pb_utils.TritonError.UNAVAILABLE)
                responses: Any = [pb_utils.InferenceResponse(error=error)]
            else:
                responses = self.bls.run(request, decoupled)
            for response in responses:
                if not self.send(("bls_item", call, response)):
                    return
        finally:
            self.send(("bls_end", call))


class ProcessInstance(PythonInstance):
    """An instance whose model runs in a stub process; see the backend's module docstring."""

    def __init__(self, model: Model, setup: InstanceSetup, context: InstanceContext) -> None:
        super().__init__(model, setup, context)
        self._args = setup.args(context)
        self._keys = itertools.count()
        self._restarting: Future[StubProcess] | None = None
        self._stub = self._start()

    def _start(self) -> StubProcess:
        spec = {
            "path": str(self.setup.path),
            "module_name": self.module_name,
            "args": self._args,
            "decoupled": self.setup.decoupled,
            "label": self.label,
        }
        stub = StubProcess(self.label, self.setup.bls)
        reply = stub.call(("init", spec), None)
        if reply[0] == "ready":
            return stub
        stub.kill()
        if reply[0] == "dead":
            raise Unavailable(
                f"{self.label}: the Python stub process exited during initialize ({describe_exit(reply[1])})"
            )
        raise Unavailable(f"{self.label}: {reply[1]}")

    def _restart(self) -> None:
        future: Future[StubProcess] = Future()

        def start() -> None:
            try:
                future.set_result(self._start())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=start, daemon=True, name=f"{self.label} restart").start()
        self._restarting = future

    def _current(self) -> StubProcess:
        if self._restarting is not None:
            try:
                self._stub = self._restarting.result()
            except ServingError as exc:
                self._restart()  # try again for the next call
                raise Unavailable(f"restarting {self.label} failed: {exc.message}") from None
            self._restarting = None
        if self._stub.dead.is_set():  # died between calls (e.g. in a thread of a decoupled model)
            log.warning(
                "%s: the stub process had exited (%s); restarting it",
                self.label,
                describe_exit(self._stub.exit_code),
            )
            self._stub = self._start()
        return self._stub

    def execute(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        stub = self._current()
        codec, decoupled = self.setup.codec, self.setup.decoupled
        keys = [next(self._keys) for _ in requests]
        with self.timer.phase("input"):
            items = [(key, codec.pb_request(request)) for key, request in zip(keys, requests, strict=True)]
        if decoupled:
            for key, request in zip(keys, requests, strict=True):
                stub.open[key] = DirectTarget(codec, request)
        timeout = self.setup.isolation.timeout_s or None
        with self.timer.phase("infer"):
            reply = stub.call(("execute", items), timeout)
        if reply[0] == "timeout":
            message = (
                f"{self.label}: execute() did not finish within {timeout} s; the stub process was killed "
                "and the instance is restarting"
            )
            self._fail_open(stub, keys, message)
            stub.kill()
            self._restart()
            raise InternalError(message)
        if reply[0] == "dead":
            message = (
                f"{self.label}: the Python stub process exited unexpectedly ({describe_exit(reply[1])}) "
                f"while executing {len(requests)} request(s); the instance is restarting"
            )
            self._fail_open(stub, keys, message)
            self._restart()
            raise InternalError(message)
        _, responses, error = reply
        if error is not None:
            self._fail_open(stub, keys, error)
            raise InternalError(error)
        return self.responses(responses, requests)

    @staticmethod
    def _fail_open(stub: StubProcess, keys: list[int], message: str) -> None:
        for key in keys:
            target = stub.open.pop(key, None)
            if target is not None:
                target.fail(message)

    def finalize(self) -> None:
        stub = self._stub
        if self._restarting is not None:
            try:
                stub = self._restarting.result()
            except ServingError:
                return
        if stub.dead.is_set():
            return
        reply = stub.call(("finalize",), FINALIZE_TIMEOUT_S)
        if reply[0] == "finalized" and reply[1]:
            log.error("%s: %s", self.label, reply[1])
        elif reply[0] == "timeout":
            log.error(
                "%s: finalize() did not return within %s s; killing the stub", self.label, FINALIZE_TIMEOUT_S
            )
        try:
            stub.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            stub.kill()
            stub.proc.wait()


def auto_complete_in_stub(path: Path, module_name: str, config: dict[str, Any], label: str) -> dict[str, Any]:
    """Run ``auto_complete_config`` in a short-lived stub; raises ExecuteError with the failure."""
    stub = StubProcess(label, None)
    try:
        reply = stub.call(("auto_complete", str(path), module_name, config), None)
    finally:
        stub.send(("exit",))
    if reply[0] == "dead":
        raise ExecuteError(
            f"the Python stub process exited during auto_complete_config ({describe_exit(reply[1])})"
        )
    _, completed, error = reply
    if error is not None:
        raise ExecuteError(error)
    return dict(completed)
