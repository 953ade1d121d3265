"""The one thread that owns an :class:`LLMEngine`: admit, abort, step, route, sleep.

Other threads only touch the inbox (under a condition variable). Each loop turn: take new requests and
inspection calls from the inbox, ``add_request`` them (a ValueError becomes that request's error response),
abort requests whose client went away, run one ``step()``, and send every output to its request's sender
(a step's responses for senders on an event loop go to that loop in one callback).
With nothing to do the thread sleeps on the condition until ``submit`` or ``stop`` wakes it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from nereid.backends.llm.engine import LLMEngine
from nereid.backends.llm.metrics import EngineMetrics
from nereid.backends.llm.outputs import RequestOutput
from nereid.backends.llm.requests import EngineRequest
from nereid.backends.llm.responses import RequestState
from nereid.server.errors import Cancelled, InternalError, InvalidArgument, ServingError, Unavailable
from nereid.server.tracing.stages import note_llm
from nereid.server.types import InferRequest, InferResponse, ResponseSender

log = logging.getLogger(__name__)
T = TypeVar("T")
_Call = tuple[Callable[[LLMEngine], Any], Future]
_Reply = tuple[ResponseSender, InferResponse, bool]


class EngineDriver:
    """Builds the engine with ``build()`` (then its ``metrics()``) on its own thread and runs it there; ``submit``
    is thread-safe and never blocks on the engine. The constructor returns once the engine is built and re-raises
    ``build``'s error.

    The engine is built on the thread that steps it because OpenMP gives every thread that runs parallel torch
    code its own thread team: a team left on a loader thread makes libgomp count more threads than CPUs and
    stop spinning between parallel regions, which made every step 10-40% slower (bench/RESULTS.md, issue 6,
    session 3).
    """

    engine: LLMEngine
    metrics: EngineMetrics

    def __init__(
        self, build: Callable[[], LLMEngine], metrics: Callable[[], EngineMetrics], name: str
    ) -> None:
        self._cond = threading.Condition()
        self._inbox: list[RequestState] = []
        self._calls: list[_Call] = []
        self._stopping = False
        self._live: dict[str, RequestState] = {}
        self._ids = itertools.count()
        ready: Future[LLMEngine] = Future()
        self._thread = threading.Thread(
            target=self._main, args=(build, metrics, ready), name=f"{name}-llm-driver", daemon=True
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            raise

    def submit(self, request: InferRequest, decoded: EngineRequest) -> None:
        with self._cond:
            if self._stopping:
                raise Unavailable("the model is unloading")
            self._inbox.append(RequestState(request, decoded))
            self._cond.notify()

    def call(self, fn: Callable[[LLMEngine], T], timeout: float = 30.0) -> T:
        """Run ``fn(engine)`` on the driver thread between two steps (safe inspection from tests/tools)."""
        future: Future = Future()
        with self._cond:
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result(timeout)

    def stop(self) -> None:
        """Stop the thread; requests still in flight get an UNAVAILABLE final response."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _main(
        self, build: Callable[[], LLMEngine], metrics: Callable[[], EngineMetrics], ready: Future[LLMEngine]
    ) -> None:
        try:
            self.engine = build()
            self.metrics = metrics()  # only for an engine that exists: a failed load leaves no series behind
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(self.engine)
        self._run()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._calls or self._stopping or self._live):
                    self._cond.wait()
                inbox, self._inbox = self._inbox, []
                calls, self._calls = self._calls, []
                stopping = self._stopping
            if stopping:
                self._shutdown(inbox, calls)
                return
            for fn, future in calls:
                _run_call(fn, future, self.engine)
            try:
                self._turn(inbox)
            except Exception as exc:  # an engine bug: fail what is in flight, keep the thread alive
                log.exception("LLM engine step failed")
                self._fail_all(InternalError(f"LLM engine failure: {type(exc).__name__}: {exc}"))

    def _turn(self, inbox: list[RequestState]) -> None:
        for state in inbox:
            self._admit(state)
        for engine_id, state in self._live.items():
            if state.cancelled:
                self.engine.abort(engine_id)
        self._route(self.engine.step())
        self.metrics.update(self.engine.stats())

    def _admit(self, state: RequestState) -> None:
        if state.cancelled:
            _send_error(state.request, Cancelled("request was cancelled"))
            return
        engine_id = str(next(self._ids))
        decoded = state.decoded
        try:
            self.engine.add_request(engine_id, decoded.prompt_ids, decoded.params, decoded.priority)
        except ValueError as exc:
            _send_error(state.request, InvalidArgument(str(exc)))
            return
        self._live[engine_id] = state
        if state.request.trace is not None:
            state.request.trace.marks["llm.admit"] = time.monotonic_ns()

    def _route(self, outputs: list[RequestOutput]) -> None:
        now = time.monotonic_ns()
        tokenizer = self.engine.tokenizer
        replies: list[_Reply] = []
        for out in outputs:
            state = self._live.get(out.request_id)
            if state is None:
                continue
            if out.new_token_ids:
                if not state.first_token_ns:
                    state.first_token_ns = now
                    self.metrics.first_token((now - state.request.arrival_ns) / 1e9)
                else:
                    self.metrics.next_token((now - state.last_token_ns) / 1e9)
                state.last_token_ns = now
            if out.finished:
                del self._live[out.request_id]
                if out.finish_reason != "abort":
                    self.metrics.finished((now - state.request.arrival_ns) / 1e9)
                if state.request.trace is not None:
                    note_llm(
                        state.request, state.first_token_ns, now, out.num_prompt_tokens,
                        out.num_generation_tokens, out.finish_reason or "",
                    )  # fmt: skip
            response = state.respond(out, tokenizer)
            if response is not None and state.request.sender is not None:
                replies.append((state.request.sender, response, out.finished))
        _deliver(replies)

    def _fail_all(self, error: ServingError) -> None:
        for engine_id, state in list(self._live.items()):
            try:
                self.engine.abort(engine_id)
            except Exception:
                log.exception("abort of request %s failed", engine_id)
            _send_error(state.request, error)
        self._live.clear()

    def _shutdown(self, inbox: list[RequestState], calls: list[_Call]) -> None:
        error = Unavailable("the model was unloaded")
        for state in inbox:
            _send_error(state.request, error)
        self._fail_all(error)
        for _fn, future in calls:
            future.set_exception(error)
        self.metrics.close()


def _deliver(replies: list[_Reply]) -> None:
    """Send one step's responses with one wake-up per event loop, not one per response.

    A sender read on an event loop (its ``loop``, e.g. the core's ``ResponseStream``) gets its responses
    through one ``call_soon_threadsafe`` per loop and step; on the loop's own thread ``send`` just queues them.
    A sender read on no loop is called directly.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Reply]] = {}
    for reply in replies:
        loop = reply[0].loop
        if loop is not None:
            by_loop.setdefault(loop, []).append(reply)
        else:
            reply[0].send(reply[1], final=reply[2])
    for loop, batch in by_loop.items():
        loop.call_soon_threadsafe(_send_all, batch)


def _send_all(replies: list[_Reply]) -> None:
    for sender, response, final in replies:
        sender.send(response, final=final)


def _send_error(request: InferRequest, error: ServingError) -> None:
    if request.sender is not None:
        request.sender.send(InferResponse(id=request.id, error=error), final=True)


def _run_call(fn: Callable[[LLMEngine], Any], future: Future, engine: LLMEngine) -> None:
    try:
        future.set_result(fn(engine))
    except BaseException as exc:
        future.set_exception(exc)
