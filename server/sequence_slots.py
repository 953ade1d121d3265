"""Where each live sequence runs: sequence slots on the instances, and the backlog.

Triton's routing: a request that starts a sequence takes a free slot (lowest slot index first,
so sequences spread over the instances) or, when every slot is held, waits with the rest of its
sequence in the backlog until a slot frees. Every later request of the sequence joins the same
slot, so one instance runs the whole sequence, in order. The END request lets the slot go once
it is taken for execution; a sequence that sends nothing for ``max_sequence_idle_microseconds``
loses its slot, and its next request is refused.

Not thread-safe: the sequence batcher calls everything here under its lock.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from nereid.server.errors import InvalidArgument, Unavailable
from nereid.server.types import CorrelationId, InferRequest, SequenceFlags

_EXPIRED_MEMORY = 4096  # idle-released sequence ids remembered for a clearer error


@dataclass(eq=False)
class Slot:
    """One sequence slot of one instance; ``state`` is the implicit state of its sequence."""

    instance: int
    index: int
    correlation_id: CorrelationId | None = None
    queue: deque[InferRequest] = field(default_factory=deque)
    state: dict[str, np.ndarray] | None = None
    last_ns: int = 0  # arrival of the sequence's latest request


@dataclass(eq=False)
class Backlog:
    """A sequence waiting for a slot, with its requests so far."""

    correlation_id: CorrelationId
    requests: deque[InferRequest] = field(default_factory=deque)


class SequenceRouter:
    """The slot or backlog of every live sequence of one model version."""

    def __init__(
        self, model: str, instances: int, slots_per_instance: int, idle_ns: int, max_backlog: int = 0
    ) -> None:
        self.model = model
        self.idle_ns = idle_ns
        self.max_backlog = max_backlog
        self.slots = [[Slot(i, s) for s in range(slots_per_instance)] for i in range(instances)]
        self._free = [(s, i) for s in range(slots_per_instance) for i in range(instances)]
        heapq.heapify(self._free)
        self._active: dict[CorrelationId, Slot] = {}
        self._waiting: dict[CorrelationId, Backlog] = {}
        self._backlog: deque[Backlog] = deque()
        self._expired: OrderedDict[CorrelationId, None] = OrderedDict()

    @property
    def backlog_size(self) -> int:
        """Sequences waiting for a slot."""
        return len(self._backlog)

    def route(self, request: InferRequest, flags: SequenceFlags, now: int) -> Slot | None:
        """Queue ``request`` with its sequence; returns the slot it joined, or None for the backlog.

        Raises InvalidArgument for a request of a sequence that was never started (or was
        released), Unavailable when every slot is held and the backlog is full.
        """
        cid = flags.correlation_id
        slot = self._active.get(cid)
        waiting = self._waiting.get(cid) if slot is None else None
        if slot is None and waiting is None:
            if not flags.start:
                raise InvalidArgument(self._not_started(cid))
            self._expired.pop(cid, None)
            if self._free:
                index, instance = heapq.heappop(self._free)
                slot = self.slots[instance][index]
                slot.correlation_id, slot.state = cid, None
            else:
                if self.max_backlog and len(self._backlog) >= self.max_backlog:
                    raise Unavailable(
                        f"inference request for sequence {cid} to model '{self.model}' cannot start: "
                        f"all {self.slot_count} sequence slots are in use and {len(self._backlog)} sequences "
                        f"already wait in the backlog (max_sequence_backlog)"
                    )
                waiting = Backlog(cid)
                self._backlog.append(waiting)
        if slot is not None:
            slot.queue.append(request)
            slot.last_ns = now
            if flags.end:
                self._active.pop(cid, None)
            else:
                self._active[cid] = slot
            return slot
        assert waiting is not None
        waiting.requests.append(request)
        if flags.end:
            self._waiting.pop(cid, None)
        else:
            self._waiting[cid] = waiting
        return None

    @property
    def slot_count(self) -> int:
        return sum(len(slots) for slots in self.slots)

    def release(self, slot: Slot, now: int) -> None:
        """The slot's sequence is over: hand the slot to the oldest backlogged sequence, or free it."""
        slot.correlation_id, slot.state = None, None
        if not self._backlog:
            heapq.heappush(self._free, (slot.index, slot.instance))
            return
        waiting = self._backlog.popleft()
        cid = waiting.correlation_id
        slot.correlation_id, slot.last_ns = cid, now
        slot.queue.extend(waiting.requests)
        if self._waiting.get(cid) is waiting:  # its END has not arrived yet: later requests go to the slot
            del self._waiting[cid]
            self._active[cid] = slot

    def reap(self, instance: int, now: int) -> int:
        """Release the instance's idle slots; returns ns until the next one may go idle (0: none held)."""
        wait = 0
        for slot in self.slots[instance]:
            cid = slot.correlation_id
            if cid is None or slot.queue or self._active.get(cid) is not slot:
                continue
            left = slot.last_ns + self.idle_ns - now
            if left > 0:
                wait = left if wait == 0 else min(wait, left)
                continue
            del self._active[cid]
            self._expired[cid] = None
            if len(self._expired) > _EXPIRED_MEMORY:
                self._expired.popitem(last=False)
            self.release(slot, now)
        return wait

    def drain(self) -> list[InferRequest]:
        """Remove every queued request (on unload)."""
        requests = [r for slots in self.slots for slot in slots for r in slot.queue]
        requests += [r for waiting in self._backlog for r in waiting.requests]
        for slots in self.slots:
            for slot in slots:
                slot.queue.clear()
        self._backlog.clear()
        self._waiting.clear()
        self._active.clear()
        return requests

    def _not_started(self, cid: CorrelationId) -> str:
        message = (
            f"inference request for sequence {cid} to model '{self.model}' must specify the START flag "
            "on the first request of the sequence"
        )
        if cid in self._expired:
            message += (
                f" (sequence {cid} was released after being idle for more than "
                f"{self.idle_ns // 1000} microseconds, the model's max_sequence_idle_microseconds)"
            )
        return message
