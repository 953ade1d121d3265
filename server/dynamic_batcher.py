"""The dynamic batcher: the Queue stage's scheduler for ordinary models.

One thread per model instance takes batches from the model version's queue and runs them.

Each instance has its own thread, so ``execute`` is never concurrent on one instance while
different instances run in parallel. The thread forms its own batches from the queue (no
event-loop round trip between batches, as in Triton), checks responses against the config,
trims them to the requested outputs, and hands a whole batch's responses to the event loop
in one callback (the execution and checks are :class:`~nereid.server.execution.InstanceRunner`'s).
"""

from __future__ import annotations

import asyncio
import threading

from nereid.backends.base import ModelInstance
from nereid.proto import model_config_pb2 as mc
from nereid.server.batch_inputs import ragged_inputs
from nereid.server.errors import Unavailable
from nereid.server.execution import InstanceRunner, Reply, deliver
from nereid.server.model_config import TensorSpec
from nereid.server.ordering import InOrder
from nereid.server.queue import RequestQueue
from nereid.server.stats import ModelStats
from nereid.server.types import InferRequest


class DynamicBatcher:
    """Feeds one model version's instances from its :class:`RequestQueue` (a ``Scheduler``).

    Without ``dynamic_batching`` in the config each request runs alone; with it, an instance
    thread takes up to ``max_batch_size`` rows of compatible shapes, waiting at most
    ``max_queue_delay_microseconds`` for a preferred batch size.
    """

    def __init__(
        self,
        name: str,
        version: str,
        config: mc.ModelConfig,
        outputs: dict[str, TensorSpec],
        instances: list[ModelInstance],
        stats: ModelStats,
    ) -> None:
        self.name = name
        self.version = version
        batching = config.dynamic_batching if config.HasField("dynamic_batching") else None
        self.max_rows = config.max_batch_size if batching else 0
        self.delay_ns = batching.max_queue_delay_microseconds * 1000 if batching else 0
        self.preferred = frozenset(batching.preferred_batch_size) if batching else frozenset()
        self.queue = RequestQueue(batching, stats, ragged_inputs(config))
        self.stats = stats
        self.runner = InstanceRunner(name, version, config, outputs, stats)
        self._instances = instances
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        ordered = batching is not None and batching.preserve_ordering and not self.runner.decoupled
        self.order = InOrder() if ordered else None

    def start(self) -> None:
        """Start one thread per instance; called on the event loop that reads the responses."""
        self._loop = asyncio.get_running_loop()
        for index, instance in enumerate(self._instances):
            thread = threading.Thread(
                target=self._work, args=(instance,), name=f"{self.name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def enqueue(self, request: InferRequest) -> None:
        self.queue.put(request)
        if self.order is not None:
            self.order.admit(request)

    def _deliver(self, replies: list[Reply]) -> None:
        """On the event loop: deliver, in arrival order with ``preserve_ordering``."""
        deliver(self.order.release(replies) if self.order is not None else replies)

    def _work(self, instance: ModelInstance) -> None:
        """An instance thread: take a batch, run it, deliver; until the queue closes."""
        assert self._loop is not None
        while True:
            batch, dead = self.queue.next_batch(self.max_rows, self.delay_ns, self.preferred)
            replies = [(request, self.runner.response(request, error)) for request, error in dead]
            if batch:
                replies.extend(self.runner.execute(instance, batch))
            if replies:
                self._loop.call_soon_threadsafe(self._deliver, replies)
            if not batch and not dead and self.queue.closed:
                return

    async def stop(self) -> None:
        """Stop taking requests, let queued and running ones finish (a drain), then end the threads.

        The version was already taken out of routing, so nothing new arrives; what was queued
        before that still runs here instead of failing (zero-downtime swaps rely on this).
        """
        self.queue.close()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        # Threads never started (a version loaded but not swapped in): fail what is left.
        if self.order is not None:
            deliver(self.order.flush())
        error = Unavailable(f"model '{self.name}' version {self.version} was unloaded")
        deliver([(request, self.runner.response(request, error)) for request in self.queue.drain()])
