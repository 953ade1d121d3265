"""Batching for framework backends: merge request inputs on dim 0, run once, split outputs back.

:class:`BatchLoop` is the group -> run -> split loop the ONNX Runtime, PyTorch and TensorRT
backends share; :func:`merge_inputs` and :func:`split_outputs` are the tensor helpers it uses
(other backends may use them directly). The scheduler only puts requests in one call when
their non-batch shapes agree; the loop groups by shape anyway, so a call that mixes shapes
still runs (one framework call per shape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from nereid.backends.base import ExecutionTimer
from nereid.server.errors import InternalError, ServingError
from nereid.server.types import InferRequest, InferResponse, Tensor

log = logging.getLogger(__name__)

Bound = TypeVar("Bound")
Result = TypeVar("Result")

Fetched = dict[str, tuple[str, np.ndarray]]
"""Output name -> (API datatype, host array), in the order the responses list them."""


def batch_sizes(requests: list[InferRequest]) -> list[int]:
    return [request.batch_size for request in requests]


def merge_inputs(requests: list[InferRequest], skip: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """One array per input name: a single request's data as is, several concatenated on dim 0.

    Inputs named in ``skip`` (ragged inputs, which the backend's ``bind`` merges) are left out.
    """
    if len(requests) == 1:
        return {tensor.name: tensor.data for tensor in requests[0].inputs if tensor.name not in skip}
    names = [tensor.name for tensor in requests[0].inputs if tensor.name not in skip]
    merged: dict[str, np.ndarray] = {}
    for name in names:
        parts = []
        for request in requests:
            tensor = request.input(name)
            if tensor is None:
                raise ValueError(f"input '{name}' missing from one request of the batch")
            parts.append(tensor.data)
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def split_outputs(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Rows of ``array`` for each request, in order, as views."""
    if len(sizes) == 1:
        return [array]
    if array.shape[0] != sum(sizes):
        raise ValueError(f"output has {array.shape[0]} rows for a batch of {sum(sizes)}")
    out: list[np.ndarray] = []
    start = 0
    for size in sizes:
        out.append(array[start : start + size])
        start += size
    return out


def group_by_shape(requests: list[InferRequest], ragged: frozenset[str] = frozenset()) -> list[list[int]]:
    """Indices of the requests that can share one call, groups in order of first appearance.

    Requests share a call when they have the same input names and datatypes and the same
    shapes apart from dim 0 (the batch dimension); ``ragged`` inputs' shapes need not agree.
    """
    if not requests:
        return []
    keys = [
        tuple([(t.name, t.datatype, () if t.name in ragged else t.shape[1:]) for t in request.inputs])
        for request in requests
    ]
    first = keys[0]
    if all(key == first for key in keys):  # the common case: the batcher grouped them already
        return [list(range(len(requests)))]
    groups: dict[tuple[tuple[str, str, tuple[int, ...]], ...], list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(tuple(sorted(key)), []).append(index)
    return list(groups.values())


class BatchLoop(Generic[Bound, Result]):
    """Runs one ``execute`` call of a framework backend; the backend supplies the framework steps.

    Steps, each given the requests of one group (``call``):

    ``prepare(request)`` (optional)
        checks or converts one request's inputs in place before grouping.
    ``bind(call, feed)``
        turns the merged numpy inputs (:func:`merge_inputs`) into what the framework takes.
    ``run(bound)``
        the framework call on the merged batch.
    ``fetch(result, call)``
        the outputs as :data:`Fetched` host arrays, with their API datatypes.

    Grouping: with ``batched`` (``max_batch_size > 0``) requests whose shapes agree
    (:func:`group_by_shape`) run as one merged batch and each output is split back by rows;
    without it every request runs alone.

    Error policy (the same for every backend):

    * a failure that belongs to one request (``prepare`` raising, e.g. bad input data) becomes
      that request's response error, and the request runs in no group;
    * any failure while a group is bound, run or fetched, or a batched output without one row
      per input row, fails every request of that group: a :class:`ServingError` is kept as is
      (backends raise them with the model name in the message), anything else becomes
      ``InternalError("model '<name>': <framework> execute failure: <message>")`` and is logged
      with its traceback;
    * other groups are unaffected, ``execute`` returns one response per request in order and
      never raises for these failures, so the instance keeps serving.

    Phases: ``prepare``, grouping, merging and ``bind`` are timed as compute input, ``run``
    as infer, ``fetch``, splitting and building responses as output.
    """

    def __init__(
        self,
        *,
        model: str,
        framework: str,
        batched: bool,
        timer: ExecutionTimer,
        bind: Callable[[list[InferRequest], dict[str, np.ndarray]], Bound],
        run: Callable[[Bound], Result],
        fetch: Callable[[Result, list[InferRequest]], Fetched],
        prepare: Callable[[InferRequest], None] | None = None,
        ragged: frozenset[str] = frozenset(),
        split: Callable[[str, np.ndarray, list[InferRequest]], list[np.ndarray] | None] | None = None,
    ) -> None:
        self.model = model
        self.framework = framework
        self.batched = batched
        self.timer = timer
        self.bind = bind
        self.run = run
        self.fetch = fetch
        self.prepare = prepare
        #: Ragged inputs: grouped whatever their shapes, left out of the merge for ``bind``.
        self.ragged = ragged
        #: Splits an output its own way (batch outputs), or returns None for the row split.
        self.split = split

    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        """One response per request, in order; failures follow the policy in the class docstring."""
        responses: list[InferResponse | None] = [None] * len(requests)
        with self.timer.phase("input"):
            ready: list[int] = []
            for index, request in enumerate(requests):
                try:
                    if self.prepare is not None:
                        self.prepare(request)
                    ready.append(index)
                except Exception as exc:
                    responses[index] = InferResponse(error=self._error(exc, 1))
            if self.batched and len(ready) > 1:
                groups = [
                    [ready[i] for i in group]
                    for group in group_by_shape([requests[i] for i in ready], self.ragged)
                ]
            else:
                groups = [[i] for i in ready]
        for group in groups:
            call = [requests[i] for i in group]
            try:
                results = self._run(call)
            except Exception as exc:
                error = self._error(exc, len(call))
                results = [InferResponse(error=error) for _ in call]
            for index, response in zip(group, results, strict=True):
                responses[index] = response
        return [response for response in responses if response is not None]

    def _run(self, call: list[InferRequest]) -> list[InferResponse]:
        with self.timer.phase("input"):
            bound = self.bind(call, merge_inputs(call, self.ragged))
        with self.timer.phase("infer"):
            result = self.run(bound)
        with self.timer.phase("output"):
            return self._responses(call, self.fetch(result, call))

    def _responses(self, call: list[InferRequest], arrays: Fetched) -> list[InferResponse]:
        sizes = batch_sizes(call) if self.batched else [1]
        parts: dict[str, list[np.ndarray]] = {}
        for name, (_, array) in arrays.items():
            own = self.split(name, array, call) if self.split is not None else None
            if own is not None:
                parts[name] = own
                continue
            if self.batched and (array.ndim == 0 or array.shape[0] != sum(sizes)):
                raise InternalError(
                    f"model '{self.model}': output '{name}' has shape {list(array.shape)}, but a batched "
                    f"model must return {sum(sizes)} row(s) along dim 0 for this batch"
                )
            parts[name] = split_outputs(array, sizes)
        return [
            InferResponse(
                outputs=[
                    Tensor(name, datatype, tuple(parts[name][i].shape), parts[name][i])
                    for name, (datatype, _) in arrays.items()
                ]
            )
            for i in range(len(call))
        ]

    def _error(self, exc: Exception, count: int) -> ServingError:
        if isinstance(exc, ServingError):
            log.info("model '%s': %d request(s) failed: %s", self.model, count, exc.message)
            return exc
        log.error("model '%s': %s failed %d request(s)", self.model, self.framework, count, exc_info=exc)
        return InternalError(f"model '{self.model}': {self.framework} execute failure: {exc}")
