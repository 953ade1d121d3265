"""The Queue stage's request queue: priority levels, queue policies, batch formation."""

from __future__ import annotations

import time

import pytest

from nereid.server.errors import InvalidArgument, Unavailable
from nereid.server.queue import QueuePolicy, RequestQueue, batch_key

from .conftest import Collector, fp32_request

BATCHING = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 2 }
  priority_queue_policy { key: 1 value { timeout_action: REJECT default_timeout_microseconds: 1000 } }
}
"""


@pytest.fixture
def queue(config, stats) -> RequestQueue:
    return RequestQueue(config(BATCHING).dynamic_batching, stats)


def queued(model: str = "m", rows: int = 1, width: int = 4, priority: int = 0):
    request = fp32_request(model, rows, width)
    request.priority = priority
    request.sender = Collector()
    return request


def test_higher_levels_leave_first_and_pending_is_counted(queue: RequestQueue, stats) -> None:
    low, high = queued(), queued(priority=1)
    queue.put(low)
    queue.put(high)
    assert stats.pending == 2 and stats.pending_by_priority == {2: 1, 1: 1}
    batch, dead = queue.next_batch(1, 0, frozenset())
    assert batch == [high] and dead == []
    assert queue.next_batch(1, 0, frozenset())[0] == [low]
    assert stats.pending == 0


def test_priority_outside_the_levels_is_refused(queue: RequestQueue) -> None:
    with pytest.raises(InvalidArgument, match=r"outside the model's priority levels \[1, 2\]"):
        queue.put(queued(priority=3))


def test_a_full_level_rejects_and_a_closed_queue_refuses(queue: RequestQueue) -> None:
    queue.put(queued())
    queue.put(queued())
    with pytest.raises(Unavailable, match="Exceeds maximum queue size"):
        queue.put(queued())
    queue.close()
    with pytest.raises(Unavailable, match="unloading"):
        queue.put(queued(priority=1))
    assert len(queue.drain()) == 2 and len(queue) == 0


def test_expired_requests_are_returned_dead_with_the_reject_error(queue: RequestQueue) -> None:
    request = queued(priority=1)
    queue.put(request)
    time.sleep(0.002)
    batch, dead = queue.next_batch(1, 0, frozenset())
    assert batch == [] and [(r, e.message) for r, e in dead] == [(request, "Request timeout expired")]


def test_cancelled_requests_never_reach_a_batch(queue: RequestQueue) -> None:
    request = queued()
    queue.put(request)
    request.sender.cancel()
    batch, dead = queue.next_batch(8, 0, frozenset())
    assert batch == [] and dead[0][0] is request


def test_batches_take_only_matching_shapes_up_to_max_rows(config, stats) -> None:
    queue = RequestQueue(config(BATCHING.replace("max_queue_size: 2", "")).dynamic_batching, stats)
    first, other_shape, third, too_many = queued(rows=3), queued(width=5), queued(rows=4), queued(rows=2)
    for request in (first, other_shape, third, too_many):
        queue.put(request)
    assert batch_key(first) == batch_key(third) != batch_key(other_shape)
    batch, _ = queue.next_batch(8, 0, frozenset())
    assert batch == [first, third]  # 7 rows; the next 2 would pass max_rows
    assert queue.next_batch(8, 0, frozenset())[0] == [other_shape]


def test_the_batcher_waits_for_a_preferred_size_only_up_to_the_delay(config, stats) -> None:
    queue = RequestQueue(config(BATCHING.replace("max_queue_size: 2", "")).dynamic_batching, stats)
    queue.put(queued(rows=2))
    start = time.monotonic()
    batch, _ = queue.next_batch(8, 20_000_000, frozenset({4}))  # 20 ms delay
    assert len(batch) == 1 and time.monotonic() - start >= 0.015
    queue.put(queued(rows=2))
    queue.put(queued(rows=2))
    start = time.monotonic()
    batch, _ = queue.next_batch(8, 5_000_000_000, frozenset({4}))
    assert len(batch) == 2 and time.monotonic() - start < 1


def test_queue_policy_from_proto(config) -> None:
    parsed = config(BATCHING).dynamic_batching
    assert QueuePolicy.from_proto(parsed.default_queue_policy).max_size == 2
    strict = QueuePolicy.from_proto(parsed.priority_queue_policy[1])
    assert strict.reject_on_timeout and strict.timeout_ns == 1_000_000
