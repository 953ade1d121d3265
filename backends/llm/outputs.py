"""What the engine hands back: per-step `RequestOutput` deltas and an `EngineStats` snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from nereid.backends.llm.sequence import SampleLogprobs


@dataclass
class RequestOutput:
    """One request's progress in one step. Fields prefixed `new_` are deltas since the previous output."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None = None
    """"stop" (eos, stop token or stop string), "length" (max_tokens or context full) or "abort"."""
    stop_reason: str | int | None = None
    """The stop string or stop token id that ended the request (None for eos)."""
    new_logprobs: list[SampleLogprobs] = field(default_factory=list)
    """One entry per new token when the request asked for logprobs."""
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    """Tokens generated so far, in total."""
    num_cached_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache."""
    prompt_logprobs: list[SampleLogprobs] | None = None
    """With the first token of a request that asked for `prompt_logprobs`: one entry per prompt token; the
    first one's logprob is meaningless (nothing predicts it) and its top list empty."""


@dataclass
class EngineStats:
    """Point-in-time gauges and monotonically increasing counters, for metrics."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    """Fraction of KV blocks referenced by sequences (0..1)."""
    num_kv_blocks: int
    num_free_kv_blocks: int
    prefix_cache_queries: int
    """Counter: prompt tokens looked up in the prefix cache."""
    prefix_cache_hits: int
    """Counter: prompt tokens found there."""
    num_preemptions: int
    prompt_tokens: int
    """Counter: prompt tokens of requests that produced their first token."""
    generation_tokens: int
    num_finished: dict[str, int] = field(default_factory=dict)
    """Counter per finish reason."""
    spec_decode_num_drafts: int = 0
    """Counter: speculative verifications of a non-empty draft (0 without speculative decoding)."""
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
