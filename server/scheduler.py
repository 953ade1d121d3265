"""The Queue stage's dispatcher: one worker per model instance pulls batches and runs them.

Each instance has its own single thread, so ``execute`` is never concurrent on one
instance while different instances run in parallel. Responses are checked against the
config, trimmed to the requested outputs, and sent to each request's stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from nereid.backends.base import ModelInstance
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import Cancelled, InternalError, ServingError, Unavailable, as_serving_error
from nereid.server.model_config import TensorSpec
from nereid.server.queue import RequestQueue
from nereid.server.stats import ExecutionRecord, ModelStats
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)


class Scheduler:
    """Feeds one model version's instances from its :class:`RequestQueue`."""

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
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{i}") for i in range(len(instances))
        ]
        self._workers: list[asyncio.Task[None]] = []
        self._inflight = 0

    def start(self) -> None:
        for instance, executor in zip(self._instances, self._executors, strict=True):
            self._workers.append(asyncio.create_task(self._work(instance, executor)))

    def enqueue(self, request: InferRequest) -> None:
        self.queue.put(request)

    async def _work(self, instance: ModelInstance, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, dead = await self.queue.next_batch(self.max_rows, self.delay_ns, self.preferred)
            for request, error in dead:
                self._fail(request, error)
            if not batch:
                if self.queue.closed and not len(self.queue):
                    return
                continue
            self._inflight += 1
            try:
                await loop.run_in_executor(executor, self._execute, instance, batch)
            finally:
                self._inflight -= 1

    def _fail(self, request: InferRequest, error: ServingError) -> None:
        if request.sender is not None:
            request.sender.send(self._response(request, error=error), final=True)

    def _response(self, request: InferRequest, error: ServingError | None = None) -> InferResponse:
        return InferResponse(self.name, self.version, request.id, error=error)

    def _execute(self, instance: ModelInstance, requests: list[InferRequest]) -> None:
        """Runs on the instance's thread."""
        live = [r for r in requests if r.sender is None or not r.sender.cancelled]
        for request in requests:
            if request.sender is not None and request.sender.cancelled:
                self._fail(request, Cancelled("request was cancelled"))
        if not live:
            return
        timer = instance.timer
        timer.input_ns = timer.infer_ns = timer.output_ns = 0
        timer._marked = False
        start = time.perf_counter_ns()
        try:
            responses = instance.execute(live)
            error: ServingError | None = None
        except Exception as exc:  # a backend failure fails this batch only
            log.exception("model '%s' version %s failed a batch", self.name, self.version)
            responses, error = None, as_serving_error(exc)
        timer.settle(time.perf_counter_ns() - start)
        rows = sum(r.batch_size for r in live) if self.max_batch_size > 0 else len(live)
        self.stats.record_execution(
            ExecutionRecord(rows, len(live), timer.input_ns, timer.infer_ns, timer.output_ns)
        )
        if error is not None:
            for request in live:
                self._fail(request, error)
            return
        if self.decoupled:
            return
        if responses is None or len(responses) != len(live):
            count = "no" if responses is None else len(responses)
            error = InternalError(f"model '{self.name}' returned {count} responses for {len(live)} requests")
            for request in live:
                self._fail(request, error)
            return
        for request, response in zip(live, responses, strict=True):
            response.model_name, response.model_version, response.id = self.name, self.version, request.id
            if response.error is None:
                self._finish_outputs(request, response)
            if request.sender is not None:
                request.sender.send(response, final=True)

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
        """Stop taking requests, fail what is queued, wait for running batches, free threads."""
        self.queue.close()
        for request in self.queue.drain():
            self._fail(request, Unavailable(f"model '{self.name}' version {self.version} was unloaded"))
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=True)

    @property
    def idle(self) -> bool:
        return self._inflight == 0 and not len(self.queue)


def _output_problem(datatype: str, shape: tuple[int, ...], spec: TensorSpec, max_batch_size: int) -> str:
    if datatype != spec.datatype:
        return f"datatype {datatype} does not match the config's {spec.datatype}"
    dims = shape[1:] if max_batch_size > 0 else shape
    if len(dims) != len(spec.dims) or any(w != -1 and g != w for g, w in zip(dims, spec.dims, strict=True)):
        return f"shape {list(shape)} does not match the config's {spec.full_shape(max_batch_size)}"
    return ""
