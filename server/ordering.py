"""``dynamic_batching.preserve_ordering``: responses leave in the order their requests arrived.

Several instances finish batches in any order; with ``preserve_ordering`` the dynamic batcher
numbers each request as it is queued and holds a finished reply until every earlier request's
reply has left. Both steps run on the event loop (queueing and delivery), so nothing locks.
Decoupled models send their own responses and are not ordered, as in Triton.
"""

from __future__ import annotations

from nereid.server.execution import Reply
from nereid.server.types import InferRequest


class InOrder:
    """A reorder buffer over one model version's replies."""

    def __init__(self) -> None:
        self._numbers: dict[int, int] = {}  # id(request) -> arrival number, until its reply leaves
        self._held: dict[int, Reply] = {}
        self._queued = 0
        self._released = 0

    def admit(self, request: InferRequest) -> None:
        """Number a request that was just queued."""
        self._numbers[id(request)] = self._queued
        self._queued += 1

    def release(self, replies: list[Reply]) -> list[Reply]:
        """The replies that may leave now, in arrival order (later ones wait for earlier ones)."""
        ready: list[Reply] = []
        for reply in replies:
            number = self._numbers.pop(id(reply[0]), None)
            if number is None:
                ready.append(reply)  # never numbered: nothing to keep it behind
            else:
                self._held[number] = reply
        while self._released in self._held:
            ready.append(self._held.pop(self._released))
            self._released += 1
        return ready

    def flush(self) -> list[Reply]:
        """Everything still held, in order (the batcher is stopping)."""
        ready = [self._held.pop(number) for number in sorted(self._held)]
        self._numbers.clear()
        return ready
