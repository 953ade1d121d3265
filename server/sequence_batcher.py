"""The sequence batcher: the Queue stage's scheduler for stateful models (``sequence_batching``).

Each request names its sequence (``sequence_id``, with ``sequence_start`` / ``sequence_end``).
:class:`~nereid.server.sequence_slots.SequenceRouter` keeps every request of one sequence in one
slot of one instance; that instance's thread takes at most one request per slot per ``execute``,
so a sequence's requests run one after the other, in arrival order, on the same instance.
Before a request runs it gets the model's control inputs and its sequence's implicit state
(:class:`~nereid.server.sequence_feeder.SequenceFeeder`); after, the state output is kept for
the sequence's next request.

Strategies (Triton's): ``direct`` batches ready slots in slot order, waiting at most
``max_queue_delay_microseconds`` for ``minimum_slot_utilization`` of the slots to be ready;
``oldest`` batches the sequences whose next request is oldest, up to ``max_batch_size``,
waiting for a preferred batch size as the dynamic batcher does. Requests batch only when
their non-batch shapes agree.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time

from nereid.backends.base import ModelInstance
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument, Unavailable
from nereid.server.execution import InstanceRunner, deliver
from nereid.server.model_config import TensorSpec
from nereid.server.queue import batch_key
from nereid.server.sequence_config import SequenceSettings
from nereid.server.sequence_feeder import SequenceFeeder
from nereid.server.sequence_slots import SequenceRouter, Slot
from nereid.server.stats import ModelStats
from nereid.server.types import InferRequest, InferResponse

_LEVEL = 1  # sequence requests have no priority levels; pending counts go to the default level


class SequenceBatcher:
    """Routes the requests of each sequence to one instance slot and runs them in order (a ``Scheduler``)."""

    def __init__(
        self,
        name: str,
        version: str,
        config: mc.ModelConfig,
        outputs: dict[str, TensorSpec],
        instances: list[ModelInstance],
        stats: ModelStats,
        settings: SequenceSettings,
    ) -> None:
        self.name = name
        self.version = version
        self.settings = settings
        self.batched = config.max_batch_size > 0
        self.stats = stats
        self.runner = InstanceRunner(name, version, config, outputs, stats)
        self.feeder = SequenceFeeder(name, settings, set(outputs), self.batched)
        self.router = SequenceRouter(
            name, len(instances), settings.slots_per_instance, settings.idle_ns, settings.max_backlog
        )
        self._needed = max(1, math.ceil(settings.minimum_slot_utilization * settings.slots_per_instance))
        self._instances = instances
        self._lock = threading.Lock()
        self._wakeups = [threading.Condition(self._lock) for _ in instances]
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def start(self) -> None:
        """Start one thread per instance; called on the event loop that reads the responses."""
        self._loop = asyncio.get_running_loop()
        for index, instance in enumerate(self._instances):
            thread = threading.Thread(
                target=self._work, args=(index, instance), name=f"{self.name}-seq-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def enqueue(self, request: InferRequest) -> None:
        """Queue a request with its sequence; raises InvalidArgument or Unavailable (Triton's texts)."""
        flags = request.sequence
        if flags is None or flags.correlation_id in (0, ""):
            raise InvalidArgument(
                f"inference request to model '{self.name}' must specify a non-zero or non-empty correlation ID"
            )
        if self.batched and request.batch_size > 1:
            raise InvalidArgument(
                f"inference request to model '{self.name}' must specify batch-size 1 due to requirements "
                "of sequence batcher"
            )
        self.feeder.check(flags)
        with self._lock:
            if self._closed:
                raise Unavailable(f"model '{self.name}' is unloading")
            slot = self.router.route(request, flags, time.monotonic_ns())
            self.stats.change_pending(_LEVEL, 1)
            if slot is not None:
                self._wakeups[slot.instance].notify()

    def _work(self, index: int, instance: ModelInstance) -> None:
        """An instance thread: take one request per ready slot, run them, keep their state; until stopped."""
        assert self._loop is not None
        while True:
            with self._lock:
                batch = self._next_batch(index)
            if batch is None:
                return
            # Requests that carry their sequence's state on (not END) -> their slot.
            keeps = {id(request): slot for request, slot in batch if slot is not None}
            hook = functools.partial(self._keep_state, keeps) if self.feeder.states else None
            replies = self.runner.execute(instance, [request for request, _ in batch], hook)
            self._loop.call_soon_threadsafe(deliver, replies)

    def _keep_state(self, keeps: dict[int, Slot], request: InferRequest, response: InferResponse) -> None:
        """After a successful execute: the state output becomes the sequence's state."""
        slot = keeps.get(id(request))
        state = self.feeder.absorb(response, slot.state if slot is not None else None)
        if slot is not None:
            slot.state = state

    def _next_batch(self, index: int) -> list[tuple[InferRequest, Slot | None]] | None:
        """Under the lock: wait for the instance's next batch; None once stopped."""
        wakeup = self._wakeups[index]
        settings = self.settings
        while True:
            now = time.monotonic_ns()
            idle_wait = self.router.reap(index, now)
            ready = [slot for slot in self.router.slots[index] if slot.queue]
            if not ready:
                if self._closed:
                    return None
                wakeup.wait(idle_wait / 1e9 if idle_wait else None)
                continue
            if settings.strategy == "oldest":
                ready.sort(key=lambda slot: slot.queue[0].arrival_ns)
            key = batch_key(ready[0].queue[0])
            chosen = [slot for slot in ready if batch_key(slot.queue[0]) == key][: settings.max_rows]
            waited = now - min(slot.queue[0].arrival_ns for slot in chosen)
            if not self._closed and waited < settings.delay_ns and not self._full(len(chosen)):
                delay_wait = settings.delay_ns - waited
                wakeup.wait(min(delay_wait, idle_wait or delay_wait) / 1e9)
                continue
            return [self._take(slot, now) for slot in chosen]

    def _full(self, count: int) -> bool:
        settings = self.settings
        if count >= settings.max_rows:
            return True
        if settings.strategy == "oldest":
            return count in settings.preferred
        return count >= self._needed

    def _take(self, slot: Slot, now: int) -> tuple[InferRequest, Slot | None]:
        """Dispatch the slot's next request with its inputs; an END request lets the slot go.

        Returns the request and, unless it ends its sequence, the slot its state output goes to.
        """
        request = slot.queue.popleft()
        request.dispatch_ns = now
        flags = request.sequence
        assert flags is not None
        if self.feeder.states and (flags.start or slot.state is None):
            slot.state = self.feeder.initial_state()
        self.feeder.prepare(request, slot.state)
        self.stats.change_pending(_LEVEL, -1)
        if flags.end:
            self.router.release(slot, now)
            return request, None
        return request, slot

    async def stop(self) -> None:
        """Stop taking requests, fail what is queued, wait for running batches to finish."""
        with self._lock:
            self._closed = True
            queued = self.router.drain()
            for wakeup in self._wakeups:
                wakeup.notify_all()
        error = Unavailable(f"model '{self.name}' version {self.version} was unloaded")
        for _ in queued:
            self.stats.change_pending(_LEVEL, -1)
        deliver([(request, self.runner.response(request, error)) for request in queued])
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
