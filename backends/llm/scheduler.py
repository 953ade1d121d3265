"""Continuous batching with a per-step token budget, chunked prefill, priorities and recompute preemption.

There are no prefill and decode phases: each step gives every scheduled sequence the tokens it still lacks
(`num_tokens - num_computed_tokens`), within `max_num_batched_tokens`. A prompt larger than the remaining
budget is prefilled in chunks over several steps (when chunked prefill is on); decodes are one token.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from nereid.backends.llm.block_manager import BlockManager
from nereid.backends.llm.config import EngineConfig
from nereid.backends.llm.sequence import FinishReason, Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    """Sequences to run this step and how many new tokens each computes."""
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class Scheduler:
    """Owns the waiting queue and the running batch.

    Order everywhere is `Sequence.sort_key`: lower priority value first, FCFS within a level. Running
    sequences are served first, in that order; when one cannot get a block, the lowest-priority newest
    running sequence is preempted (blocks freed, back to waiting, recomputed later) until it can, or it
    preempts itself.
    Waiting sequences are admitted, head first, only in steps without preemption.
    """

    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.sort_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        self.running.sort(key=lambda s: s.sort_key)
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if n <= 0:
                i += 1
                continue
            while not self.block_manager.can_append_slots(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                self.block_manager.append_slots(seq, n)
                out.scheduled.append((seq, n))
                budget -= n
                i += 1
        if not out.preempted:
            self._admit(out, budget)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        bm, bs = self.block_manager, self.block_manager.block_size
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            cached = bm.lookup_prefix(seq)
            num_cached = len(cached) * bs
            n = seq.num_tokens - num_cached
            if n > budget and not self.config.enable_chunked_prefill:
                break
            n = min(n, budget)
            if not bm.can_allocate(seq, num_cached + n, cached):
                break
            bm.allocate(seq, num_cached + n, cached)
            self.waiting.pop(0)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append((seq, n))
            budget -= n

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = seq.num_cached_tokens = 0
        self.num_preemptions += 1
        self.add(seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Take the sequence out of the queues and free its blocks immediately."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
