from __future__ import annotations

from nereid.backends.llm.block_manager import BlockManager
from nereid.backends.llm.config import EngineConfig
from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.scheduler import Scheduler
from nereid.backends.llm.sequence import FinishReason, Sequence, SequenceStatus


def make(num_blocks: int = 4, budget: int = 64, chunked: bool = True) -> Scheduler:
    config = EngineConfig(
        model="unused",
        block_size=4,
        max_num_seqs=4,
        max_num_batched_tokens=budget,
        max_model_len=16,
        enable_chunked_prefill=chunked,
    )
    return Scheduler(config, BlockManager(num_blocks, 4))


def seq(name: str, n: int = 8, priority: int = 0) -> Sequence:
    return Sequence(name, list(range(1, n + 1)), SamplingParams(), max_tokens=8, priority=priority)


def complete_step(scheduler: Scheduler, out) -> None:
    """What the engine does after the model ran: advance computed tokens, sample a token when caught up."""
    for s, n in out.scheduled:
        s.num_computed_tokens += n
        if s.num_computed_tokens == s.num_tokens:
            s.append_token(0)


def test_token_budget_chunks_prefill_and_mixes_decodes():
    scheduler = make(num_blocks=16, budget=6)
    a, b = seq("a", 4), seq("b", 8)
    scheduler.add(a)
    scheduler.add(b)
    out = scheduler.schedule()
    assert [(s.request_id, n) for s, n in out.scheduled] == [("a", 4), ("b", 2)]
    complete_step(scheduler, out)
    out = scheduler.schedule()
    assert [(s.request_id, n) for s, n in out.scheduled] == [("a", 1), ("b", 5)]  # decode + prefill chunk
    assert out.num_batched_tokens == 6


def test_no_chunking_waits_for_budget():
    scheduler = make(num_blocks=16, budget=16, chunked=False)
    scheduler.add(seq("a", 10))
    scheduler.add(seq("b", 8))
    out = scheduler.schedule()
    assert [s.request_id for s, _ in out.scheduled] == ["a"]  # b's 8 tokens exceed the 6 left


def test_preempts_lowest_priority_newest_first():
    scheduler = make(num_blocks=4)
    high, low_old, low_new = seq("high", 4, 0), seq("low_old", 4, 1), seq("low_new", 4, 1)
    for s in (low_old, low_new, high):
        scheduler.add(s)
    out = scheduler.schedule()
    assert [s.request_id for s, _ in out.scheduled] == ["high", "low_old", "low_new"]  # 3 of 4 blocks
    complete_step(scheduler, out)  # each needs a second block now: only one is free
    out = scheduler.schedule()
    assert [s.request_id for s in out.preempted] == ["low_new"]  # its block goes to low_old
    assert [s.request_id for s, _ in out.scheduled] == ["high", "low_old"]
    assert low_new.status is SequenceStatus.WAITING and low_new.block_table == []
    assert low_new.num_computed_tokens == 0 and low_new.num_tokens == 5  # keeps its output, recomputes it
    assert scheduler.waiting == [low_new] and scheduler.num_preemptions == 1
    complete_step(scheduler, out)
    out = scheduler.schedule()
    while not out.preempted:  # decode until both need a third block; none is free: low_old goes next
        complete_step(scheduler, out)
        out = scheduler.schedule()
    assert [s.request_id for s in out.preempted] == ["low_old"] and high.num_computed_tokens == 8
    assert [s.request_id for s in scheduler.waiting] == ["low_old", "low_new"]  # FCFS within the level
    scheduler.block_manager.check_no_leaks(scheduler.running)


def test_sequence_preempts_itself_when_it_is_the_lowest():
    scheduler = make(num_blocks=2)
    a, b = seq("a", 4, 0), seq("b", 4, 5)
    scheduler.add(a)
    scheduler.add(b)
    complete_step(scheduler, scheduler.schedule())
    a.append_token(0)  # a needs no new block yet; b does
    a.num_computed_tokens = 4
    out = scheduler.schedule()
    assert [s.request_id for s in out.preempted] == ["b"]
    assert [s.request_id for s, _ in out.scheduled] == ["a"]


def test_finish_frees_blocks():
    scheduler = make(num_blocks=4)
    a = seq("a", 8)
    scheduler.add(a)
    scheduler.schedule()
    scheduler.finish(a, FinishReason.ABORT)
    assert a.status is SequenceStatus.FINISHED and a.finish_reason == "abort"
    assert scheduler.block_manager.num_free_blocks == 4 and not scheduler.has_unfinished()
