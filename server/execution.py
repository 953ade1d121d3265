"""Running one batch on a model instance: what every scheduler of the Queue stage shares.

:class:`InstanceRunner` calls ``execute`` on an instance thread, records execution statistics,
checks that the backend answered each request once, checks outputs against the config, trims
them to the requested outputs, and returns the replies; :func:`deliver` hands replies to their
senders on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nereid.backends.base import ModelInstance
from nereid.proto import model_config_pb2 as mc
from nereid.server.classification import PARAMETER as CLASSIFICATION
from nereid.server.classification import classify
from nereid.server.errors import Cancelled, InternalError, InvalidArgument, ServingError, as_serving_error
from nereid.server.model_config import TensorSpec
from nereid.server.reshape import Reshaper
from nereid.server.resource_limiter import Ticket
from nereid.server.stats import ExecutionRecord, ModelStats
from nereid.server.tracing.stages import note_batch
from nereid.server.types import InferRequest, InferResponse, RequestedOutput, Tensor

log = logging.getLogger(__name__)

Reply = tuple[InferRequest, InferResponse]
# Sees each successful response before its outputs are checked (the sequence batcher takes
# implicit state outputs out there).
ResponseHook = Callable[[InferRequest, InferResponse], None]


class InstanceRunner:
    """Runs batches of one model version on its instances (thread-safe: no mutable state)."""

    def __init__(
        self,
        name: str,
        version: str,
        config: mc.ModelConfig,
        outputs: dict[str, TensorSpec],
        stats: ModelStats,
    ) -> None:
        self.name = name
        self.version = version
        self.decoupled = config.model_transaction_policy.decoupled
        self.max_batch_size = config.max_batch_size
        self.stats = stats
        self._outputs = outputs
        #: Rate-limiter tickets by instance index (``--rate-limit execution_count``); see
        #: :mod:`nereid.server.resource_limiter`.
        self.tickets: dict[int, Ticket] = {}
        self.reshaper = Reshaper(config, name)
        #: Class labels by output (``label_filename``), for the classification extension.
        self.labels: dict[str, list[str]] = {}

    def response(self, request: InferRequest, error: ServingError | None = None) -> InferResponse:
        return InferResponse(self.name, self.version, request.id, error=error)

    def execute(
        self, instance: ModelInstance, requests: list[InferRequest], hook: ResponseHook | None = None
    ) -> list[Reply]:
        """Run one batch on the instance's thread; returns the replies to deliver.

        Cancelled requests are answered CANCELLED without running; a backend that raises or
        miscounts its responses fails the whole batch, and the instance keeps serving.
        """
        replies: list[Reply] = []
        live: list[InferRequest] = []
        for request in requests:
            if request.sender is not None and request.sender.cancelled:
                replies.append((request, self.response(request, Cancelled("request was cancelled"))))
                continue
            try:
                self.reshaper.to_backend(request)
            except InvalidArgument as exc:
                replies.append((request, self.response(request, exc)))
                continue
            live.append(request)
        if not live:
            return replies
        ticket = self.tickets.get(instance.context.index)
        if ticket is not None:
            ticket.acquire()  # waits until the resources this instance needs are free
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
        finally:
            if ticket is not None:
                ticket.release()
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
            return replies + [(request, self.response(request, failure)) for request in live]
        # The backend's own check suffices unless a hook (the sequence batcher's) changed the outputs.
        checked = instance.checks_outputs and hook is None
        for request, response in zip(live, responses, strict=True):
            response.model_name, response.model_version, response.id = self.name, self.version, request.id
            if response.error is None:
                if hook is not None:
                    hook(request, response)
                if not checked:
                    self.finish_outputs(request, response)
                elif self.reshaper.outputs:  # checked against the reshape dims; give back the config's
                    self.reshaper.to_client(self.name, response)
            replies.append((request, response))
        return replies

    def finish_outputs(self, request: InferRequest, response: InferResponse) -> None:
        """Check outputs against the config and keep only those the client asked for."""
        self.reshaper.to_client(self.name, response)
        for tensor in response.outputs:
            spec = self._outputs.get(tensor.name)
            if spec is None:
                if self._outputs:
                    response.error = InternalError(
                        f"model '{self.name}' returned output '{tensor.name}' that its config does not declare"
                    )
                continue
            problem = output_problem(tensor.datatype, tensor.shape, spec, self.max_batch_size)
            if problem:
                response.error = InternalError(f"model '{self.name}' output '{tensor.name}': {problem}")
        if response.error is not None:
            response.outputs = []
        elif request.outputs:
            wanted = {o.name: o for o in request.outputs}
            response.outputs = [
                self._classified(t, wanted[t.name]) for t in response.outputs if t.name in wanted
            ]

    def _classified(self, tensor: Tensor, requested: RequestedOutput) -> Tensor:
        count = requested.parameters.get(CLASSIFICATION) if requested.parameters else None
        if count is None:
            return tensor
        return classify(tensor, count, self.labels.get(tensor.name, []), self.max_batch_size > 0)


def deliver(replies: list[Reply]) -> None:
    """On the event loop: hand each final response to its request's stream."""
    for request, response in replies:
        if request.sender is not None:
            request.sender.send(response, final=True)


def output_problem(datatype: str, shape: tuple[int, ...], spec: TensorSpec, max_batch_size: int) -> str:
    """What is wrong with an output of ``datatype`` and ``shape`` against its spec ("" if nothing)."""
    if datatype != spec.datatype:
        return f"datatype {datatype} does not match the config's {spec.datatype}"
    dims = shape[1:] if max_batch_size > 0 else shape
    if len(dims) != len(spec.dims) or any(w != -1 and g != w for g, w in zip(dims, spec.dims, strict=True)):
        return f"shape {list(shape)} does not match the config's {spec.full_shape(max_batch_size)}"
    return ""
