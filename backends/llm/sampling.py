"""`SamplingParams`: the per-request decoding settings, with vLLM's names and semantics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

GREEDY_EPS = 1e-5
"""Temperatures below this mean greedy decoding (top_p, top_k and min_p are then ignored)."""


@dataclass
class GuidedDecodingParams:
    """One grammar the output must match (vLLM's `GuidedDecodingParams` / `StructuredOutputsParams`): a JSON
    Schema (`json`, a dict or its text), any JSON object (`json_object`), a `regex`, one of the strings in
    `choice`, or an EBNF `grammar` (GBNF, root rule `root`). Exactly one is set; ValueError otherwise."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False

    KINDS = ("json", "regex", "choice", "grammar", "json_object")

    def __post_init__(self) -> None:
        given = [k for k in self.KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                f"guided decoding needs exactly one of {', '.join(self.KINDS)}, got {given or 'none'}"
            )
        if isinstance(self.json, str):
            try:
                self.json = json.loads(self.json)
            except json.JSONDecodeError as exc:
                raise ValueError(f"guided json schema is not valid JSON: {exc}") from None
        checks = [
            (self.json is None or isinstance(self.json, dict), "guided json schema must be a JSON object"),
            (
                self.regex is None or (isinstance(self.regex, str) and self.regex),
                "guided regex must be a string",
            ),
            (
                self.grammar is None or (isinstance(self.grammar, str) and self.grammar),
                "guided grammar must be a string",
            ),
            (
                self.choice is None
                or (
                    isinstance(self.choice, list)
                    and self.choice
                    and all(isinstance(c, str) for c in self.choice)
                ),
                "guided choice must be a non-empty list of strings",
            ),
            (isinstance(self.json_object, bool), "guided json_object must be a boolean"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> GuidedDecodingParams:
        """From vLLM's dict form; keys outside :attr:`KINDS` (backend hints) are ignored when None or false."""
        unknown = sorted(k for k, v in value.items() if k not in cls.KINDS and v not in (None, False, ""))
        if unknown:
            raise ValueError(
                f"unsupported guided decoding option {unknown[0]!r} (supported: {', '.join(cls.KINDS)})"
            )
        return cls(**{k: v for k, v in value.items() if k in cls.KINDS})


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. Invalid values raise ValueError on construction.

    Penalties follow vLLM: `repetition_penalty` divides positive / multiplies negative logits of every token
    seen in the prompt or the output; `frequency_penalty` subtracts penalty * count and `presence_penalty`
    subtracts the penalty once, both over output tokens only. `logprobs=k` returns the chosen token's logprob
    and the top k.
    Engine-wide limits (largest n, largest logprobs) are checked by the engine at `add_request`.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    max_tokens: int | None = 16
    """None: up to the model's context length."""
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    """Logprobs of the prompt's tokens (and the top k at each position) from the prefill logits; the first
    token has none. Such a request skips the prefix cache (its prompt's logits must all be computed)."""
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Added to the logits of these token ids before sampling (OpenAI: -100..100; ids checked by the engine)."""
    guided_decoding: GuidedDecodingParams | None = None
    """Structured output: tokens are masked so that the output matches this grammar (compiled by the engine)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        self.logit_bias = dict(self.logit_bias)
        if isinstance(self.guided_decoding, dict):
            self.guided_decoding = GuidedDecodingParams.from_dict(self.guided_decoding)
        checks = [
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k == -1 or self.top_k >= 1, f"top_k must be -1 (disabled) or >= 1, got {self.top_k}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0.0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (
                -2.0 <= self.frequency_penalty <= 2.0,
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                -2.0 <= self.presence_penalty <= 2.0,
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (
                self.max_tokens is None or self.max_tokens >= 1,
                f"max_tokens must be >= 1, got {self.max_tokens}",
            ),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (self.logprobs is None or self.logprobs >= 0, f"logprobs must be >= 0, got {self.logprobs}"),
            (
                self.prompt_logprobs is None or self.prompt_logprobs >= 0,
                f"prompt_logprobs must be >= 0, got {self.prompt_logprobs}",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (
                all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
                "stop_token_ids must be ints >= 0",
            ),
            (
                all(
                    isinstance(t, int) and t >= 0 and -100.0 <= b <= 100.0 for t, b in self.logit_bias.items()
                ),
                "logit_bias must map token ids >= 0 to values in [-100, 100]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
