"""Turn the engine's per-step :class:`RequestOutput` deltas into decoupled :class:`InferResponse` messages.

Every response carries ``text_output`` (BYTES [1]) and parameters ``token_ids`` (``list[int]``),
``prompt_tokens``, ``completion_tokens``, ``cached_tokens``; the final one adds ``finish_reason`` (and
``stop_reason`` when a stop string or stop token ended it); ``logprobs`` (``list[TokenLogprob]``) when the
request asked for them. These are the typed form of :mod:`nereid.server.textgen`; the codecs write the JSON
text wire clients get.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nereid.backends.llm.outputs import RequestOutput
from nereid.backends.llm.requests import EngineRequest
from nereid.backends.llm.sequence import SampleLogprobs
from nereid.backends.llm.tokenizer import Tokenizer
from nereid.server.textgen import LOGPROBS, PROMPT_LOGPROBS, TOKEN_IDS, TokenLogprob, TopLogprob
from nereid.server.types import InferRequest, InferResponse, Tensor


class RequestState:
    """One request inside the driver: what it has produced and when (for metrics)."""

    __slots__ = (
        "decoded",
        "first_token_ns",
        "last_token_ns",
        "logprobs",
        "prompt_logprobs",
        "request",
        "texts",
        "token_ids",
    )

    def __init__(self, request: InferRequest, decoded: EngineRequest) -> None:
        self.request = request
        self.decoded = decoded
        self.first_token_ns = 0
        self.last_token_ns = 0
        # Accumulated only when not streaming.
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[SampleLogprobs] = []
        self.prompt_logprobs: list[SampleLogprobs] | None = None

    @property
    def cancelled(self) -> bool:
        sender = self.request.sender
        return sender is not None and sender.cancelled

    def respond(self, out: RequestOutput, tokenizer: Tokenizer) -> InferResponse | None:
        """The response to send for ``out``, or None while a non-streaming request is unfinished."""
        if self.decoded.stream:
            text, ids, logprobs = out.new_text, out.new_token_ids, out.new_logprobs
            prompt_logprobs = out.prompt_logprobs
            if self.decoded.prompt_text:
                text, self.decoded.prompt_text = self.decoded.prompt_text + text, ""
        else:
            self.texts.append(out.new_text)
            self.token_ids.extend(out.new_token_ids)
            self.logprobs.extend(out.new_logprobs)
            self.prompt_logprobs = out.prompt_logprobs or self.prompt_logprobs
            prompt_logprobs = self.prompt_logprobs
            if not out.finished:
                return None
            text = self.decoded.prompt_text + "".join(self.texts)
            ids, logprobs = self.token_ids, self.logprobs
        params: dict[str, Any] = {
            TOKEN_IDS: list(ids),
            "prompt_tokens": out.num_prompt_tokens or len(self.decoded.prompt_ids),
            "completion_tokens": out.num_generation_tokens,
            "cached_tokens": out.num_cached_tokens,
        }
        if out.finished:
            params["finish_reason"] = out.finish_reason or "stop"
            if out.stop_reason is not None:
                params["stop_reason"] = out.stop_reason
        if self.decoded.params.logprobs is not None:
            params[LOGPROBS] = [_token_logprob(lp, tokenizer) for lp in logprobs]
        if prompt_logprobs:
            params[PROMPT_LOGPROBS] = [_token_logprob(lp, tokenizer) for lp in prompt_logprobs]
        return InferResponse(id=self.request.id, outputs=[text_tensor(text)], parameters=params)


def text_tensor(text: str) -> Tensor:
    data = np.empty(1, dtype=object)
    data[0] = text.encode("utf-8")
    return Tensor("text_output", "BYTES", (1,), data)


def _token_logprob(lp: SampleLogprobs, tokenizer: Tokenizer) -> TokenLogprob:
    tops = [
        TopLogprob(t, _token(tokenizer, t), _finite(p), list(tokenizer.token_bytes(t)))
        for t, p in zip(lp.top_token_ids, lp.top_logprobs, strict=True)
    ]
    own = list(tokenizer.token_bytes(lp.token_id))
    return TokenLogprob(lp.token_id, _token(tokenizer, lp.token_id), _finite(lp.logprob), tops, own)


def _finite(logprob: float) -> float:
    """-inf (a masked token) has no JSON form; report it as OpenAI and vLLM do."""
    return logprob if math.isfinite(logprob) else -9999.0


def _token(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)
