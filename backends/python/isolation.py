"""The stub-process instance (the default): one stub per instance, restarted when it dies or hangs.

Server and stub talk over two socket pairs (the stub's stdout and stderr stay the server's, so
``print`` in a model still shows up in the server log), and tensor bytes go through two shared
memory arenas (:mod:`~nereid.backends.python.arena`, :mod:`~nereid.backends.python.wire`).

The call socket carries one command at a time from the instance thread to the stub's main thread
and the stub's answer straight back, with no thread in between:

    server -> stub   ("arena", "request" | "response", size) then the memory file's descriptor
                     ("init", spec) | ("execute", [RequestItem]) | ("finalize",)
                     ("auto_complete", path, module_name, config)
    stub -> server   (async_sent, answer), answer one of ("ready",) | ("init_error", message)
                     ("result", [ResponseItem] | None, error | None, arena bytes needed)
                     ("finalized", problem | None) | ("config", config | None, error | None)

The async socket carries what model threads start, read by a thread on each side:

    stub -> server   ("send", key, response | None, final) | ("bls", call, request, decoupled)
                     ("cancelled", call, key)
    server -> stub   ("bls_item", call, response) | ("bls_end", call) | ("answer", call, value)

``async_sent`` fences the two: before the server acts on an answer it has handled every async
message the stub sent before it (a decoupled response sent just before ``execute`` raised, say).
"""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from nereid.backends.base import InstanceContext, Model
from nereid.backends.python import pb_utils
from nereid.backends.python.arena import Arena, bytes_needed, grown_size
from nereid.backends.python.bls import CoreBls
from nereid.backends.python.channel import Channel
from nereid.backends.python.codec import sequence_flags_of
from nereid.backends.python.custom_metrics import apply_metric
from nereid.backends.python.instance import DirectTarget, InstanceSetup, PythonInstance
from nereid.backends.python.runner import ExecuteError
from nereid.backends.python.wire import RequestItem, named, unpack_responses
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
    """One stub process: its two sockets, its arenas, and the thread that reads the async socket."""

    def __init__(self, label: str, bls: CoreBls | None) -> None:
        self.label = label
        self.bls = bls
        self.open: dict[int, DirectTarget] = {}  # decoupled requests still streaming
        self.live: dict[int, InferRequest] = {}  # requests of the call in progress
        self.exit_code: int | None = None
        self.dead = threading.Event()
        self.stopping = False  # set when the server ends the stub on purpose
        self.arenas: dict[str, Arena] = {}
        self._lock = threading.Lock()
        self._handled = 0
        self._fence = threading.Condition()
        calls, stub_calls = socket.socketpair()
        events, stub_events = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", STUB_MODULE, str(stub_calls.fileno()), str(stub_events.fileno())],
                pass_fds=(stub_calls.fileno(), stub_events.fileno()),
            )
        finally:
            stub_calls.close()
            stub_events.close()
        self.conn = Channel(calls)
        self.events = Channel(events)
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"nereid-stub-{self.proc.pid}")
        self._reader.start()

    # ---- the call socket (the instance thread) ---------------------------------------------

    def call(self, message: tuple[Any, ...], timeout: float | None) -> tuple[Any, ...]:
        """Send ``message`` and wait for the answer: ``("timeout",)`` or ``("dead", code)`` on failure."""
        try:
            self.conn.send(message)
            if not self.conn.poll(timeout):
                return ("timeout",)
            fence, answer = self.conn.recv()
        except (EOFError, OSError):
            return ("dead", self._exit_status())
        if fence > self._handled:
            with self._fence:
                self._fence.wait_for(lambda: self._handled >= fence or self.dead.is_set())
        return tuple(answer)

    def set_arena(self, which: str, size: int) -> bool:
        """Give the stub a new ``which`` arena of ``size`` bytes (the old one is dropped)."""
        arena = Arena(size)
        try:
            self.conn.send(("arena", which, size), (arena.fd,))
        except OSError:
            arena.close()
            return False
        arena.close_fd()
        old = self.arenas.pop(which, None)
        if old is not None:
            old.close()
        self.arenas[which] = arena
        return True

    def retire(self) -> None:
        """The server is done with this stub: kill it if it still runs, and unmap its arenas."""
        self.kill()
        for arena in self.arenas.values():
            arena.close()
        self.arenas.clear()
        self.conn.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.stopping = True
            self.proc.kill()

    def _exit_status(self) -> int | None:
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    # ---- the async socket (the reader thread) ------------------------------------------------

    def send_event(self, message: tuple[Any, ...]) -> bool:
        try:
            with self._lock:
                self.events.send(message)
        except OSError:
            return False
        return True

    def _read(self) -> None:
        while True:
            try:
                message = self.events.recv()
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
            elif kind == "cancelled":
                self.send_event(("answer", message[1], self._cancelled(message[2])))
            elif kind == "metric":
                self.send_event(("answer", message[1], apply_metric(message[2])))
            with self._fence:
                self._handled += 1
                self._fence.notify_all()
        self.exit_code = self._exit_status()
        self.events.close()
        self.dead.set()
        with self._fence:
            self._fence.notify_all()
        if not self.stopping:
            log.error(
                "%s: the Python stub process (pid %d) crashed: %s; its in-flight requests fail and the "
                "instance restarts",
                self.label,
                self.proc.pid,
                describe_exit(self.exit_code),
            )
        message = (
            f"{self.label}: the Python stub process exited unexpectedly ({describe_exit(self.exit_code)})"
        )
        for key in list(self.open):
            target = self.open.pop(key, None)
            if target is not None:
                target.fail(message)

    def _cancelled(self, key: int) -> bool:
        target = self.open.get(key)
        if target is not None:
            return target.cancelled()
        request = self.live.get(key)
        return request is not None and request.sender is not None and request.sender.cancelled

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
                if not self.send_event(("bls_item", call, response)):
                    return
        finally:
            self.send_event(("bls_end", call))


def start_stub(label: str, bls: CoreBls | None) -> StubProcess:
    """A stub with its two arenas in place."""
    stub = StubProcess(label, bls)
    for which in ("request", "response"):
        stub.set_arena(which, grown_size(0, 0))
    return stub


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
            "model_name": self.setup.context.name,
            "version": self.setup.context.version,
        }
        stub = start_stub(self.label, self.setup.bls)
        reply = stub.call(("init", spec), None)
        if reply[0] == "ready":
            return stub
        stub.retire()
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
            self._stub.retire()
            self._stub = self._start()
        return self._stub

    def _items(self, stub: StubProcess, keys: list[int], requests: list[InferRequest]) -> list[RequestItem]:
        """The call's headers, its input bytes written to the request arena (grown first if need be)."""
        tensors = [named(request.inputs) for request in requests]
        needed = sum(bytes_needed(t) for t in tensors)
        arena = stub.arenas["request"]
        if needed > arena.size and (size := grown_size(needed, arena.size)):
            stub.set_arena("request", size)
            arena = stub.arenas["request"]
        headers, _ = arena.pack([t for group in tensors for t in group])
        items: list[RequestItem] = []
        start = 0
        codec = self.setup.codec
        for key, request, group in zip(keys, requests, tensors, strict=True):
            requested, correlation, parameters = codec.request_fields(request)
            items.append(
                (
                    key,
                    request.id,
                    correlation,
                    sequence_flags_of(request),
                    parameters,
                    requested,
                    headers[start : start + len(group)],
                )
            )
            start += len(group)
        return items

    def execute(self, requests: list[InferRequest]) -> list[InferResponse] | None:
        stub = self._current()
        codec, decoupled = self.setup.codec, self.setup.decoupled
        keys = [next(self._keys) for _ in requests]
        with self.timer.phase("input"):
            items = self._items(stub, keys, requests)
        stub.live = dict(zip(keys, requests, strict=True))
        if decoupled:
            for key, request in zip(keys, requests, strict=True):
                stub.open[key] = DirectTarget(codec, request)
        timeout = self.setup.isolation.timeout_s or None
        with self.timer.phase("infer"):
            reply = stub.call(("execute", items), timeout)
        stub.live = {}
        if reply[0] == "timeout":
            message = (
                f"{self.label}: execute() did not finish within {timeout} s; the stub process was killed "
                "and the instance is restarting"
            )
            log.warning("%s", message)
            self._fail_open(stub, keys, message)
            stub.retire()
            self._restart()
            raise InternalError(message)
        if reply[0] == "dead":
            message = (
                f"{self.label}: the Python stub process exited unexpectedly ({describe_exit(reply[1])}) "
                f"while executing {len(requests)} request(s); the instance is restarting"
            )
            self._fail_open(stub, keys, message)
            stub.retire()
            self._restart()
            raise InternalError(message)
        _, packed, error, needed = reply
        if error is not None:
            self._fail_open(stub, keys, error)
            raise InternalError(error)
        if packed is None:
            return self.responses(None, requests)
        arena = stub.arenas["response"]
        with self.timer.phase("output"):
            returned = unpack_responses(packed, arena)
        if needed > arena.size and (size := grown_size(needed, arena.size)):
            stub.set_arena("response", size)  # for the next call; this one came inline
        return self.responses(returned, requests)

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
            stub.retire()
            return
        stub.stopping = True
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
        stub.dead.wait(5)  # the reader has delivered what the stub sent before it exited
        stub.retire()


def auto_complete_in_stub(path: Path, module_name: str, config: dict[str, Any], label: str) -> dict[str, Any]:
    """Run ``auto_complete_config`` in a short-lived stub; raises ExecuteError with the failure."""
    stub = StubProcess(label, None)
    try:
        reply = stub.call(("auto_complete", str(path), module_name, config), None)
    finally:
        stub.retire()
    if reply[0] == "dead":
        raise ExecuteError(
            f"the Python stub process exited during auto_complete_config ({describe_exit(reply[1])})"
        )
    _, completed, error = reply
    if error is not None:
        raise ExecuteError(error)
    return dict(completed)
