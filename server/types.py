"""Transport-neutral request, response and tensor types.

Codecs turn wire formats into these and back; the core, the scheduler and the backends
see nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from nereid.server.errors import ServingError

Parameters = dict[str, Any]  # bool | int | float | str values, as on the wire


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
    """Where a request's responses go; thread-safe, callable from backend threads."""

    def send(self, response: InferResponse | None, final: bool) -> None: ...

    @property
    def cancelled(self) -> bool: ...


@dataclass(slots=True, eq=False)
class InferRequest:
    """One inference request as the core sees it.

    ``model_version`` is the version the client asked for ("" lets the core choose).
    ``priority`` 0 means the model's default level; ``timeout_us`` 0 means none.
    """

    model_name: str
    inputs: list[Tensor]
    model_version: str = ""
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)
    priority: int = 0
    timeout_us: int = 0
    arrival_ns: int = field(default_factory=time.monotonic_ns)
    # Set by the scheduler when the request leaves the queue for an instance.
    dispatch_ns: int = 0
    # Set by the core before the request is queued.
    sender: ResponseSender | None = None

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
