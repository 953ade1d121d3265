"""The dynamic batcher: the Queue stage's scheduler for ordinary models.

One thread per model instance takes batches from the model version's queue and runs them.

Each instance has its own thread, so ``execute`` is never concurrent on one instance while
different instances run in parallel. The thread forms its own batches from the queue (no
event-loop round trip between batches, as in Triton), checks responses against the config,
trims them to the requested outputs, and hands a whole batch's responses to the event loop
in one callback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from nereid.backends.base import ModelInstance
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import Cancelled, InternalError, ServingError, Unavailable, as_serving_error
from nereid.server.model_config import TensorSpec
from nereid.server.queue import RequestQueue
from nereid.server.stats import ExecutionRecord, ModelStats
from nereid.server.tracing.stages import note_batch
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)


class DynamicBatcher:
    """Feeds one model version's instances from its :class:`RequestQueue` (a ``Scheduler``).

    Without ``dynamic_batching`` in the config each request runs alone; with it, an instance
    thread takes up to ``max_batch_size`` rows of compatible shapes, waiting at most
    ``max_queue_delay_microseconds`` for a preferred batch size.
    """

    def __init__(
        self,
        name: str,
        version: str,
        config: mc.ModelConfig,
        outputs: dict[str, TensorSpec],
        instances: list[ModelInstance],
        stats: ModelStats,
    ) -> None:
        self.name = name
        self.version = version
        self.decoupled = config.model_transaction_policy.decoupled
        self.max_batch_size = config.max_batch_size
        batching = config.dynamic_batching if config.HasField("dynamic_batching") else None
        self.max_rows = config.max_batch_size if batching else 0
        self.delay_ns = batching.max_queue_delay_microseconds * 1000 if batching else 0
        self.preferred = frozenset(batching.preferred_batch_size) if batching else frozenset()
        self.queue = RequestQueue(batching, stats)
        self.stats = stats
        self._outputs = outputs
        self._instances = instances
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start one thread per instance; called on the event loop that reads the responses."""
        self._loop = asyncio.get_running_loop()
        for index, instance in enumerate(self._instances):
            thread = threading.Thread(
                target=self._work, args=(instance,), name=f"{self.name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def enqueue(self, request: InferRequest) -> None:
        self.queue.put(request)

    def _work(self, instance: ModelInstance) -> None:
        """An instance thread: take a batch, run it, deliver; until the queue closes."""
        assert self._loop is not None
        while True:
            batch, dead = self.queue.next_batch(self.max_rows, self.delay_ns, self.preferred)
            replies = [(request, self._response(request, error=error)) for request, error in dead]
            if batch:
                replies.extend(self._execute(instance, batch))
            if replies:
                self._loop.call_soon_threadsafe(_deliver, replies)
            if not batch and not dead and self.queue.closed:
                return

    def _response(self, request: InferRequest, error: ServingError | None = None) -> InferResponse:
        return InferResponse(self.name, self.version, request.id, error=error)

    def _execute(self, instance: ModelInstance, requests: list[InferRequest]) -> list[Reply]:
        """Run one batch on the instance's thread; returns the replies to deliver."""
        replies: list[Reply] = []
        live: list[InferRequest] = []
        for request in requests:
            if request.sender is not None and request.sender.cancelled:
                replies.append((request, self._response(request, Cancelled("request was cancelled"))))
            else:
                live.append(request)
        if not live:
            return replies
        timer = instance.timer
        timer.reset()
        start = time.perf_counter_ns()
        try:
            responses = instance.execute(live)
            error: ServingError | None = None
        except Exception as exc:  # a backend failure fails this batch only
            log.exception(
                "model '%s' version %s failed a batch",
                self.name,
                self.version,
                extra={"model": self.name, "version": self.version, "request_id": live[0].id or None},
            )
            responses, error = None, as_serving_error(exc)
        timer.settle(time.perf_counter_ns() - start)
        rows = sum(r.batch_size for r in live) if self.max_batch_size > 0 else len(live)
        self.stats.record_execution(
            ExecutionRecord(rows, len(live), timer.input_ns, timer.infer_ns, timer.output_ns)
        )
        traced = [request for request in live if request.trace is not None]
        if traced:
            phases = (timer.input_ns, timer.infer_ns, timer.output_ns)
            note_batch(traced, len(live), rows, phases, time.monotonic_ns())
        if error is None and self.decoupled:
            return replies  # the backend sends through each request's sender
        if error is None and (responses is None or len(responses) != len(live)):
            count = "no" if responses is None else len(responses)
            error = InternalError(f"model '{self.name}' returned {count} responses for {len(live)} requests")
        if error is not None or responses is None:
            failure = error or InternalError(f"model '{self.name}' returned no responses")
            return replies + [(request, self._response(request, failure)) for request in live]
        for request, response in zip(live, responses, strict=True):
            response.model_name, response.model_version, response.id = self.name, self.version, request.id
            if response.error is None:
                self._finish_outputs(request, response)
            replies.append((request, response))
        return replies

    def _finish_outputs(self, request: InferRequest, response: InferResponse) -> None:
        """Check outputs against the config and keep only those the client asked for."""
        for tensor in response.outputs:
            spec = self._outputs.get(tensor.name)
            if spec is None:
                if self._outputs:
                    response.error = InternalError(
                        f"model '{self.name}' returned output '{tensor.name}' that its config does not declare"
                    )
                continue
            problem = _output_problem(tensor.datatype, tensor.shape, spec, self.max_batch_size)
            if problem:
                response.error = InternalError(f"model '{self.name}' output '{tensor.name}': {problem}")
        if response.error is not None:
            response.outputs = []
        elif request.outputs:
            wanted = {o.name for o in request.outputs}
            response.outputs = [t for t in response.outputs if t.name in wanted]

    async def stop(self) -> None:
        """Stop taking requests, let queued and running ones finish (a drain), then end the threads.

        The version was already taken out of routing, so nothing new arrives; what was queued
        before that still runs here instead of failing (zero-downtime swaps rely on this).
        """
        self.queue.close()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        # Threads never started (a version loaded but not swapped in): fail what is left.
        error = Unavailable(f"model '{self.name}' version {self.version} was unloaded")
        _deliver([(request, self._response(request, error)) for request in self.queue.drain()])


Reply = tuple[InferRequest, InferResponse]


def _deliver(replies: list[Reply]) -> None:
    """On the event loop: hand each final response to its request's stream."""
    for request, response in replies:
        if request.sender is not None:
            request.sender.send(response, final=True)


def _output_problem(datatype: str, shape: tuple[int, ...], spec: TensorSpec, max_batch_size: int) -> str:
    if datatype != spec.datatype:
        return f"datatype {datatype} does not match the config's {spec.datatype}"
    dims = shape[1:] if max_batch_size > 0 else shape
    if len(dims) != len(spec.dims) or any(w != -1 and g != w for g, w in zip(dims, spec.dims, strict=True)):
        return f"shape {list(shape)} does not match the config's {spec.full_shape(max_batch_size)}"
    return ""
