"""One request's walk through an ensemble plan.

A :class:`Run` holds the ensemble tensors that exist so far and the steps still to decide. A
step starts as soon as every tensor it reads exists (independent branches run at once); it is
skipped when its condition is false or a tensor it reads can no longer appear (its producers
were skipped), and a skipped step costs nothing. Tensors pass between steps as the same numpy
arrays: nothing is copied.

A decoupled step's responses each start a child run of the steps downstream of it, in order;
a child's outputs go out as one response of the (decoupled) ensemble.

On the first failing step the run cancels the steps still running (their queued requests are
dropped by their models' queues), starts nothing more, drops its tensors and raises the step's
error, prefixed with the ensemble and step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nereid.ensembles.plan import Condition, EnsemblePlan, Step
from nereid.ensembles.stats import EnsembleStats
from nereid.server.errors import Cancelled, InvalidArgument, ServingError, Unavailable
from nereid.server.types import CoreHandle, InferRequest, InferResponse, RequestedOutput, Tensor


def renamed(tensor: Tensor, name: str) -> Tensor:
    """The same data under another name (no copy)."""
    return Tensor(name, tensor.datatype, tensor.shape, tensor.data)


@dataclass(eq=False)
class RunContext:
    """What every run of one request shares."""

    plan: EnsemblePlan
    core: CoreHandle
    stats: EnsembleStats
    request: InferRequest
    requested: frozenset[str]
    emit: Callable[[InferRequest, list[Tensor]], None]
    pending_emits: list[asyncio.Future[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        timeout_us = self.request.timeout_us
        self.deadline_ns = self.request.arrival_ns + timeout_us * 1000 if timeout_us else 0
        self.needed = self.plan.needed_steps(self.requested)

    @property
    def cancelled(self) -> bool:
        sender = self.request.sender
        return sender is not None and sender.cancelled

    def step_outputs(self, step: Step) -> list[str]:
        """Outputs of ``step`` somebody needs: requested ensemble outputs or a needed step's inputs."""
        wanted = []
        for output, tensor in step.output_map.items():
            consumers = self.plan.consumers.get(tensor, ())
            if tensor in self.requested or any(c in self.needed for c in consumers):
                wanted.append(output)
        return wanted

    def step_request(self, step: Step, tensors: dict[str, Tensor]) -> InferRequest:
        parent = self.request
        parameters = dict(parent.parameters)
        timeout_us = 0
        if self.deadline_ns:
            timeout_us = (self.deadline_ns - time.monotonic_ns()) // 1000
            if timeout_us <= 0:
                raise Unavailable("Request timeout expired")
            parameters["timeout"] = timeout_us
        return InferRequest(
            step.model_name,
            [renamed(tensors[tensor], name) for name, tensor in step.input_map.items()],
            model_version=step.model_version,
            id=parent.id,
            outputs=[RequestedOutput(name) for name in self.step_outputs(step)],
            parameters=parameters,
            priority=parent.priority,
            timeout_us=timeout_us,
            # A traced ensemble request traces each step as a child span of its own.
            trace=parent.trace.child() if parent.trace is not None else None,
        )

    async def emitted(self) -> None:
        """Wait until every response of the decoupled steps' child runs has gone out."""
        if self.pending_emits:
            await asyncio.gather(*self.pending_emits)


class Run:
    """A set of steps over a set of tensors; the root run has every needed step."""

    def __init__(self, context: RunContext, steps: set[int], tensors: dict[str, Tensor]) -> None:
        self.context = context
        self.pending = steps
        self.tensors = tensors
        self.own: set[str] = set()  # tensors this run produced (a child emits these)
        self.running: dict[asyncio.Task[None], int] = {}
        self.live: set[int] = set()  # steps started (or about to start) and not finished
        self._finished: list[asyncio.Task[None]] = []
        self._wake: asyncio.Future[None] | None = None

    async def execute(self) -> None:
        """Run every step of this run; a step's error (or the request's cancellation) ends it."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                ready = self._advance()
                if len(ready) == 1 and not self.running and not ready[0].decoupled:
                    await self._step(ready[0])  # a chain: no task, no wake-up in between
                    self.live.discard(ready[0].index)
                    continue
                for step in ready:
                    self._start(step)
                if not self.running:
                    return
                if not self._finished:
                    self._wake = loop.create_future()
                    await self._wake
                finished, self._finished = self._finished, []
                for task in finished:
                    self.live.discard(self.running.pop(task))
                    task.result()
        except BaseException:
            await self._cancel_running()
            self.release()
            raise

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task in self.running:
            self._finished.append(task)
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

    def release(self) -> None:
        self.tensors = {}
        self.pending.clear()

    async def _cancel_running(self) -> None:
        tasks = list(self.running)
        self.running.clear()
        self._finished.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- deciding steps ---------------------------------------------------------------------

    def _advance(self) -> list[Step]:
        """Skip every pending step that cannot run; return those that can start now."""
        plan = self.context.plan
        ready: list[Step] = []
        changed = True
        while changed:
            changed = False
            for index in sorted(self.pending):
                step = plan.steps[index]
                reads = step.reads
                if any(self._absent(tensor) for tensor in reads):
                    self._skip(index)
                    changed = True
                elif all(tensor in self.tensors for tensor in reads):
                    self.pending.discard(index)
                    if step.when is not None and not self._holds(step, step.when):
                        self._skip(index)
                        changed = True
                    else:
                        ready.append(step)
                        self.live.add(index)
                        if step.decoupled:  # its downstream steps run per response, in child runs
                            self.pending -= self.context.plan.downstream(step.index)
        return ready

    def _absent(self, tensor: str) -> bool:
        """The tensor does not exist and no step that could still produce it is pending or running."""
        if tensor in self.tensors:
            return False
        return not any(
            p in self.pending or p in self.live for p in self.context.plan.producers.get(tensor, ())
        )

    def _skip(self, index: int) -> None:
        self.pending.discard(index)
        self.context.stats.record_skipped(index)

    def _holds(self, step: Step, when: Condition) -> bool:
        data = self.tensors[when.tensor].data
        if not when.is_route:
            return bool(data.size) and bool(np.all(data))
        values = {_text(item) for item in data.reshape(-1)}
        if len(values) != 1:
            raise InvalidArgument(
                f"{step.label} routes on '{when.tensor}', which must hold one value for the whole request, "
                f"got {sorted(values)[:4]} in shape {list(data.shape)}"
            )
        value = values.pop()
        return value not in when.others if when.otherwise else value in when.equals

    def _start(self, step: Step) -> None:
        loop = asyncio.get_running_loop()
        if step.decoupled:
            children = set(self.context.plan.downstream(step.index)) & self.context.needed
            task = loop.create_task(self._stream_step(step, children))
        else:
            task = loop.create_task(self._step(step))
        self.running[task] = step.index
        task.add_done_callback(self._on_done)

    # ---- running steps ----------------------------------------------------------------------

    async def _step(self, step: Step) -> None:
        context = self.context
        request = context.step_request(step, self.tensors)
        start = time.perf_counter_ns()
        try:
            response = await context.core.infer(request)
        except ServingError as exc:
            context.stats.record_step(step.index, False, time.perf_counter_ns() - start)
            raise _step_error(context, step, exc) from None
        context.stats.record_step(step.index, True, time.perf_counter_ns() - start)
        self._take(step, response)

    def _take(self, step: Step, response: InferResponse) -> None:
        for tensor in response.outputs:
            name = step.output_map.get(tensor.name)
            if name is not None:
                self.tensors[name] = renamed(tensor, name)
                self.own.add(name)

    async def _stream_step(self, step: Step, children: set[int]) -> None:
        """A decoupled step: each response runs ``children`` once, emitted in response order."""
        context = self.context
        request = context.step_request(step, self.tensors)
        start = time.perf_counter_ns()
        runs: list[asyncio.Task[None]] = []
        previous: asyncio.Future[None] | None = None
        ok = False
        try:
            async for response in context.core.stream(request):
                if response.error is not None:
                    raise _step_error(context, step, response.error)
                if not response.outputs:
                    continue
                child = Run(context, set(children), dict(self.tensors))
                child._take(step, response)
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                context.pending_emits.append(done)
                runs.append(asyncio.get_running_loop().create_task(child.execute_and_emit(previous, done)))
                previous = done
            if runs:
                await asyncio.gather(*runs)
            ok = True
        except ServingError as exc:
            raise _step_error(context, step, exc) from None
        finally:
            context.stats.record_step(step.index, ok, time.perf_counter_ns() - start)
            for run in runs:
                run.cancel()

    async def execute_and_emit(
        self, previous: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> None:
        """Run as a decoupled step's child, then send its outputs after the previous child's."""
        try:
            await self.execute()
            if previous is not None:
                await previous
            context = self.context
            outputs = [
                self.tensors[n] for n in context.plan.outputs if n in self.own and n in context.requested
            ]
            if outputs:
                context.emit(context.request, outputs)
            self.release()
            done.set_result(None)
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else Cancelled("request was cancelled"))
                done.exception()  # retrieved here; the step's task reports it
            raise


def _step_error(context: RunContext, step: Step, error: ServingError) -> ServingError:
    """The step's error, same code, naming the ensemble, the step and its model."""
    if error.message.startswith("in ensemble"):
        return error
    message = f"in ensemble '{context.plan.name}', {step.label} failed: {error.message}"
    return type(error)(message, error.code)


def _text(value: object) -> str:
    """A route value as text: BYTES as UTF-8, booleans as true/false, numbers in decimal."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.bool_ | bool):
        return "true" if value else "false"
    if isinstance(value, np.floating):
        return repr(float(value))
    return str(value)
