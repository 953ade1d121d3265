"""Transport-neutral request, response and tensor types.

Codecs turn wire formats into these and back; the core, the scheduler and the backends
see nothing else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import asyncio

    from nereid.proto import model_config_pb2 as mc
    from nereid.server.errors import ServingError
    from nereid.server.tracing.context import TraceContext

Parameters = dict[str, Any]  # scalars on the wire; typed values in process (see nereid.server.parameters)
CorrelationId = int | str  # a sequence id: 0 and "" mean "not in a sequence"


@dataclass(slots=True)
class Tensor:
    """A named tensor. BYTES data is a numpy object array of ``bytes``; BF16 is ``uint16``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


class ResponseSender(Protocol):
    """Where a request's responses go; thread-safe, callable from backend threads.

    ``loop`` is the event loop the responses are read on, or None for a sender read on no loop:
    a producer with many responses at once (the LLM driver) posts them there in one wake-up.
    """

    def send(self, response: InferResponse | None, final: bool) -> None: ...

    @property
    def cancelled(self) -> bool: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    """A request's place in a sequence (the ``sequence`` extension's request parameters)."""

    correlation_id: CorrelationId
    start: bool = False
    end: bool = False


@dataclass(slots=True, eq=False)
class InferRequest:
    """One inference request as the core sees it.

    ``model_version`` is the version the client asked for ("" lets the core choose).
    ``priority`` 0 means the model's default level; ``timeout_us`` 0 means none.
    ``sequence`` is set by the core from the ``sequence_id`` / ``sequence_start`` /
    ``sequence_end`` parameters (None when the request names no sequence).
    """

    model_name: str
    inputs: list[Tensor]
    model_version: str = ""
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)
    priority: int = 0
    timeout_us: int = 0
    sequence: SequenceFlags | None = None
    arrival_ns: int = field(default_factory=time.monotonic_ns)
    # Set by the scheduler when the request leaves the queue for an instance.
    dispatch_ns: int = 0
    # Set by the core before the request is queued.
    sender: ResponseSender | None = None
    # Set by a front-end for a sampled request only; stages note their times on it (server/tracing).
    trace: TraceContext | None = None

    def input(self, name: str) -> Tensor | None:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        return None

    @property
    def batch_size(self) -> int:
        """Rows along dim 0 (meaningful only for models with max_batch_size > 0)."""
        return self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else 1


@dataclass(slots=True, eq=False)
class InferResponse:
    """One response. A request of a decoupled model may get several; the last has ``final``."""

    model_name: str = ""
    model_version: str = ""
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)
    error: ServingError | None = None
    final: bool = True

    def output(self, name: str) -> Tensor | None:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        return None


class CoreHandle(Protocol):
    """What a loaded model may ask of the core that loaded it (BLS calls, ensemble steps).

    Coroutines run on :attr:`loop`; a backend thread schedules them there with
    ``asyncio.run_coroutine_threadsafe``. Errors leave as ``ServingError``.
    """

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The core's event loop once it has started, else None."""

    async def infer(self, request: InferRequest) -> InferResponse:
        """One request of a non-decoupled model through its normal queue; raises its error."""

    def stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Every response of one request, in order; the last has ``final`` set."""

    def model_ready(self, name: str, version: str = "") -> bool: ...

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        """The config of the version a request naming ``version`` gets; raises if none is ready."""

    async def load_model(self, name: str, config: mc.ModelConfig | None = None) -> None: ...

    async def unload_model(self, name: str) -> None: ...


class Scheduler(Protocol):
    """The Queue stage of one model version: takes requests, answers each through its sender.

    The dynamic batcher, a sequence batcher and the ensemble scheduler are interchangeable here.
    ``start`` runs on the event loop that reads the responses; ``enqueue`` is called on that loop
    with a validated request whose ``sender`` is set, and raises ``Unavailable`` when the queue
    refuses it; ``stop`` stops taking requests and lets queued and running ones finish or fail.
    """

    def start(self) -> None: ...

    def enqueue(self, request: InferRequest) -> None: ...

    async def stop(self) -> None: ...
