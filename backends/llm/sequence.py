"""`Sequence`: one request's tokens and its place in the scheduler and the KV cache."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from nereid.backends.llm.sampling import SamplingParams

_seq_counter = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass
class SampleLogprobs:
    """Logprobs at one generated position: the chosen token's and the top-N (from the raw model logits)."""

    token_id: int
    logprob: float
    top_token_ids: list[int] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)


class Sequence:
    """Prompt plus generated tokens. Invariant: `num_computed_tokens <= num_tokens`; the KV of the first
    `num_computed_tokens` tokens lives in the blocks of `block_table`. The scheduler schedules the difference.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        priority: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.request_id = request_id
        self.seq_id = next(_seq_counter)
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.max_tokens = max_tokens
        self.priority = priority
        self.arrival_time = time.monotonic()
        self.generator = generator
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        """Chained hashes of the full blocks seen so far (independent of which physical blocks hold them)."""
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.stop_reason: str | int | None = None
        self.output_logprobs: list[SampleLogprobs] = []
        self.prompt_logprobs: list[SampleLogprobs] = []
        """Filled by the model runner during prefill when `params.prompt_logprobs` is set."""
        if params.prompt_logprobs is not None:
            self.prompt_logprobs.append(SampleLogprobs(prompt_token_ids[0], 0.0))
        self.grammar: Any = None
        """Structured output: the xgrammar matcher the sampler masks with and advances (None: unconstrained)."""

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table})"
        )

    @property
    def sort_key(self) -> tuple[int, float, int]:
        """Scheduling order: lower priority value first, then first come first served."""
        return (self.priority, self.arrival_time, self.seq_id)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int, logprobs: SampleLogprobs | None = None) -> None:
        self.token_ids.append(token_id)
        if logprobs is not None:
            self.output_logprobs.append(logprobs)
