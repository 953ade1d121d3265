"""The Queue stage's request queue: priority levels, queue policies, batch forming.

Triton's semantics (``dynamic_batching``): priority level 1 is served first; inside a level,
arrival order. A level's ``ModelQueuePolicy`` bounds its size and its time in queue;
``timeout_action`` REJECT answers UNAVAILABLE, DELAY moves the request behind all others.
Requests batch only when their non-batch shapes agree.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import Cancelled, InvalidArgument, ServingError, Unavailable
from nereid.server.stats import ModelStats
from nereid.server.types import InferRequest


@dataclass(slots=True)
class QueuePolicy:
    reject_on_timeout: bool = True
    timeout_ns: int = 0
    allow_override: bool = False
    max_size: int = 0

    @classmethod
    def from_proto(cls, policy: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(
            reject_on_timeout=policy.timeout_action != mc.ModelQueuePolicy.DELAY,
            timeout_ns=policy.default_timeout_microseconds * 1000,
            allow_override=policy.allow_timeout_override,
            max_size=policy.max_queue_size,
        )


@dataclass(slots=True, eq=False)
class QueuedRequest:
    request: InferRequest
    level: int
    deadline_ns: int  # 0: none
    key: tuple


def batch_key(request: InferRequest, ragged: frozenset[str] = frozenset()) -> tuple:
    """Requests with equal keys can be concatenated along dim 0 (ragged inputs' shapes need not agree)."""
    return tuple((t.name, None if t.name in ragged else t.shape[1:]) for t in request.inputs)


class RequestQueue:
    """Priority queue of one model version, shared by all of its instances.

    Requests are put from the event loop; instance threads take batches with the blocking
    :meth:`next_batch`, so forming a batch and running it never waits for the loop.
    """

    def __init__(
        self,
        batching: mc.ModelDynamicBatching | None,
        stats: ModelStats,
        ragged: frozenset[str] = frozenset(),
    ) -> None:
        self.ragged = ragged
        self.has_levels = bool(batching and batching.priority_levels)
        self.levels = max(1, batching.priority_levels) if batching else 1
        self.default_level = (batching.default_priority_level or 1) if batching else 1
        default = QueuePolicy.from_proto(batching.default_queue_policy) if batching else QueuePolicy()
        self._policies = [default] * (self.levels + 1)
        if batching:
            for level, policy in batching.priority_queue_policy.items():
                self._policies[level] = QueuePolicy.from_proto(policy)
        # index 0 unused; index levels+1 holds DELAYed requests whose timeout expired.
        self._queues: list[deque[QueuedRequest]] = [deque() for _ in range(self.levels + 2)]
        self._stats = stats
        self._cond = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)

    def level_of(self, request: InferRequest) -> int:
        # Without configured levels the priority is not the queue's business: it stays on the
        # request for backends that schedule by it (the LLM engine), as Triton ignores it.
        if request.priority == 0 or not self.has_levels:
            return self.default_level
        if not 1 <= request.priority <= self.levels:
            raise InvalidArgument(
                f"priority {request.priority} is outside the model's priority levels [1, {self.levels}]"
            )
        return request.priority

    def put(self, request: InferRequest) -> None:
        """Admit a request or raise (full queue: UNAVAILABLE; closed: UNAVAILABLE)."""
        with self._cond:
            self._put(request)
            self._cond.notify()

    def _put(self, request: InferRequest) -> None:
        if self.closed:
            raise Unavailable(f"model '{request.model_name}' is unloading")
        level = self.level_of(request)
        policy = self._policies[level]
        queue = self._queues[level]
        if policy.max_size and len(queue) >= policy.max_size:
            raise Unavailable("Exceeds maximum queue size")
        timeout_ns = policy.timeout_ns
        if request.timeout_us and (policy.allow_override or not timeout_ns):
            requested = request.timeout_us * 1000
            timeout_ns = min(timeout_ns, requested) if timeout_ns else requested
        deadline = request.arrival_ns + timeout_ns if timeout_ns else 0
        queue.append(QueuedRequest(request, level, deadline, batch_key(request, self.ragged)))
        self._stats.change_pending(level, 1)

    def _pop_dead(self, now: int) -> list[tuple[QueuedRequest, ServingError]]:
        """Remove cancelled and expired (REJECT) requests; move expired DELAY ones to the back."""
        dead: list[tuple[QueuedRequest, ServingError]] = []
        delayed = self._queues[-1]
        for level in range(1, self.levels + 1):
            queue = self._queues[level]
            if not queue:
                continue
            keep: deque[QueuedRequest] = deque()
            for item in queue:
                sender = item.request.sender
                if sender is not None and sender.cancelled:
                    dead.append((item, Cancelled("request was cancelled")))
                elif item.deadline_ns and now >= item.deadline_ns:
                    if self._policies[level].reject_on_timeout:
                        dead.append((item, Unavailable("Request timeout expired")))
                    else:
                        item.deadline_ns = 0
                        delayed.append(item)
                else:
                    keep.append(item)
            if len(keep) != len(queue):
                self._queues[level] = keep
        for item, _ in dead:
            self._stats.change_pending(item.level, -1)
        return dead

    def _head(self) -> QueuedRequest | None:
        for queue in self._queues[1:]:
            if queue:
                return queue[0]
        return None

    def _gather(self, head: QueuedRequest, max_rows: int) -> tuple[list[QueuedRequest], int]:
        batch, rows = [], 0
        for queue in self._queues[1:]:
            for item in queue:
                size = item.request.batch_size
                if item.key != head.key or rows + size > max_rows:
                    continue
                batch.append(item)
                rows += size
                if rows == max_rows:
                    return batch, rows
        return batch, rows

    def _remove(self, batch: list[QueuedRequest]) -> None:
        taken = {id(item) for item in batch}
        for index, queue in enumerate(self._queues):
            if queue and any(id(item) in taken for item in queue):
                self._queues[index] = deque(item for item in queue if id(item) not in taken)
        now = time.monotonic_ns()
        for item in batch:
            item.request.dispatch_ns = now
            self._stats.change_pending(item.level, -1)

    def next_batch(
        self, max_rows: int, delay_ns: int, preferred: frozenset[int]
    ) -> tuple[list[InferRequest], list[tuple[InferRequest, ServingError]]]:
        """Block until the next batch is ready; also returns requests that died in the queue.

        Called on instance threads. ``max_rows`` 0 means no batching: one request at a time.
        Returns two empty lists once the queue is closed and empty.
        """
        with self._cond:
            while True:
                now = time.monotonic_ns()
                dead = [(item.request, err) for item, err in self._pop_dead(now)]
                head = self._head()
                if head is None:
                    if dead or self.closed:
                        return [], dead
                    self._cond.wait()
                    continue
                if max_rows == 0:
                    batch, rows = [head], head.request.batch_size
                else:
                    batch, rows = self._gather(head, max_rows)
                waited = now - head.request.arrival_ns
                # A closed queue drains without waiting for fuller batches.
                full = max_rows == 0 or rows >= max_rows or rows in preferred
                if full or waited >= delay_ns or self.closed:
                    self._remove(batch)
                    if self._head() is not None:
                        self._cond.notify()  # more work: wake another idle instance
                    return [item.request for item in batch], dead
                if dead:
                    return [], dead
                self._cond.wait((delay_ns - waited) / 1e9)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def drain(self) -> list[InferRequest]:
        """Remove everything still queued (what no instance thread will run any more)."""
        with self._cond:
            items = [item for queue in self._queues for item in queue]
            self._remove(items)
        return [item.request for item in items]
