"""The ensemble scheduler: runs each request's steps through the core as soon as their inputs exist.

It is the Queue stage of an ensemble (``nereid.server.types.Scheduler``). Each request becomes a
task on the core's loop that walks the plan (:mod:`nereid.ensembles.run`); every step is an
ordinary request to the step model through ``core.infer`` / ``core.stream``, so it takes that
model's queue, dynamic batching, instances, priorities and statistics. The ensemble's own
request counters are kept by the core like any model's; this adds one execution per request
and the per-step figures (:class:`~nereid.ensembles.stats.EnsembleStats`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nereid.backends.base import InstanceContext, Model, ModelContext, ModelInstance
from nereid.ensembles.binding import bind_steps
from nereid.ensembles.plan import EnsemblePlan, build_plan
from nereid.ensembles.run import Run, RunContext, renamed
from nereid.ensembles.stats import EnsembleStats
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import Cancelled, InternalError, ServingError, Unavailable, as_serving_error
from nereid.server.stats import ExecutionRecord
from nereid.server.types import CoreHandle, InferRequest, InferResponse, ResponseSender

log = logging.getLogger(__name__)


class EnsembleModel(Model):
    """The backend-model slot of an ensemble version: it has no instances and nothing to free."""

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        raise InternalError(f"ensemble '{self.context.name}' has no instances")


class EnsembleScheduler:
    """Serves one ensemble version; see the module docstring."""

    def __init__(
        self, name: str, version: str, config: mc.ModelConfig, plan: EnsemblePlan, core: CoreHandle
    ) -> None:
        self.name = name
        self.version = version
        self.plan = plan
        self.core = core
        self.stats = EnsembleStats(plan)
        self._config = config
        self._batching = config.max_batch_size > 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._steps = list(dict.fromkeys((s.model_name, s.model_version) for s in plan.steps))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def enqueue(self, request: InferRequest) -> None:
        if self._closed or self._loop is None:
            raise Unavailable(f"model '{self.name}' is unloading")
        request.dispatch_ns = time.monotonic_ns()  # an ensemble has no queue of its own
        task = self._loop.create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Take no new requests; let those running finish (their steps fail if a step model goes)."""
        self._closed = True
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def unready_reason(self) -> str:
        """Why the ensemble cannot serve now ("" when every step model is ready)."""
        for model, version in self._steps:
            if not self.core.model_ready(model, version):
                which = f" version {version}" if version else ""
                return f"step model '{model}'{which} of ensemble '{self.name}' is not ready"
        return ""

    async def _serve(self, request: InferRequest) -> None:
        sender = request.sender
        assert sender is not None
        decoupled = self._config.model_transaction_policy.decoupled
        requested = tuple(o.name for o in request.outputs) or self.plan.outputs
        context = RunContext(self.plan, self.core, self.stats, request, frozenset(requested), self._emit)
        start = time.perf_counter_ns()
        root = Run(context, set(self.plan.needed_steps(context.requested)), dict(_inputs(request)))
        watch = _CancelWatch(sender)
        try:
            await root.execute()
            await context.emitted()
        except asyncio.CancelledError:
            if not watch.fired:
                raise
            sender.send(self._response(request, error=Cancelled("request was cancelled")), final=True)
            return
        except ServingError as exc:
            sender.send(self._response(request, error=exc), final=True)
            return
        except Exception as exc:  # a bug here must still answer the request
            log.exception("ensemble '%s' failed a request", self.name)
            sender.send(self._response(request, error=as_serving_error(exc)), final=True)
            return
        finally:
            watch.stop()
        rows = request.batch_size if self._batching else 1
        self.stats.record_execution(ExecutionRecord(rows, 1, 0, time.perf_counter_ns() - start, 0))
        produced = root.tensors if not decoupled else {n: root.tensors[n] for n in root.own}
        outputs = [renamed(produced[name], name) for name in requested if name in produced]
        if decoupled and not outputs:
            sender.send(None, final=True)
        else:
            sender.send(self._response(request, outputs), final=True)
        root.release()

    def _emit(self, request: InferRequest, outputs: list) -> None:
        """One response of a decoupled ensemble (a run after a decoupled step finished)."""
        assert request.sender is not None
        request.sender.send(self._response(request, outputs), final=False)

    def _response(
        self, request: InferRequest, outputs: list | None = None, error: ServingError | None = None
    ) -> InferResponse:
        return InferResponse(self.name, self.version, request.id, outputs=outputs or [], error=error)


class _CancelWatch:
    """Cancels the current task soon after the client cancels (a sender has no callback for it).

    One timer per request, re-armed while the request runs; the steps' waits stay plain awaits.
    """

    POLL_S = 0.05

    def __init__(self, sender: ResponseSender) -> None:
        self.sender = sender
        self.fired = False
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self.POLL_S, self._check)

    def _check(self) -> None:
        if self.sender.cancelled and self._task is not None:
            self.fired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_later(self.POLL_S, self._check)

    def stop(self) -> None:
        self._handle.cancel()


def _inputs(request: InferRequest) -> dict:
    return {tensor.name: tensor for tensor in request.inputs}


def load_ensemble(
    name: str, version: int, config: mc.ModelConfig, context: ModelContext, core: CoreHandle | None
) -> tuple[EnsembleModel, EnsembleScheduler]:
    """Build one ensemble version (loader thread): the plan, bound to the step models' configs."""
    origin = str(context.model_dir)
    if core is None:
        raise InternalError(f"ensemble '{name}' needs the core to run its steps")
    plan = build_plan(config, origin)
    bind_steps(plan, config, core.model_config, origin)
    return EnsembleModel(context), EnsembleScheduler(name, str(version), config, plan, core)
