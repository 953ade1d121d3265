"""Incremental detokenisation for streaming, with stop strings that may span token boundaries."""

from __future__ import annotations

from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.tokenizer import Tokenizer

_CONTEXT_TOKENS = 5
"""Prompt tokens decoded along with the output so tokenizers that strip a leading space decode correctly."""


class IncrementalDetokenizer:
    """Feed tokens one by one with `add_token`; take text with `pop_delta`.

    Text is released only when it is complete UTF-8 (no trailing U+FFFD from a partial multi-byte character),
    and, while stop strings are active, the last `len(longest stop) - 1` characters are held back so a stop
    string is never streamed before it is recognised. On a stop string match the text is cut before it (or
    after it with `include_stop_str_in_output`).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stop = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in self.stop), default=0)
        self.hold = self.max_stop_len - 1 if self.stop and not self.include_stop else 0
        self.ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset, self.read_offset = 0, len(self.ids)
        self.text = ""
        self.emitted = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add_token(self, token_id: int, check_stop: bool = True) -> str | None:
        """Append a token's text; return the stop string it completed, if any (the text is then final)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # wait for the rest of a multi-byte character
        before = len(self.text)
        self.text += full[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._find_stop(before) if check_stop else None

    def _find_stop(self, before: int) -> str | None:
        if not self.stop:
            return None
        start = max(0, before - self.max_stop_len + 1)
        found = [(idx, s) for s in self.stop if (idx := self.text.find(s, start)) >= 0]
        if not found:
            return None
        idx, stop = min(found)
        self.text = self.text[: idx + (len(stop) if self.include_stop else 0)]
        return stop

    def _flush(self) -> None:
        if self.read_offset < len(self.ids):  # a trailing partial character: release it as is
            prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
            self.text += self._decode(self.ids[self.prefix_offset :])[len(prefix) :]
            self.prefix_offset = self.read_offset = len(self.ids)

    def pop_delta(self, finished: bool) -> str:
        """Text not returned yet; everything when `finished`, else all but the held-back tail."""
        if finished:
            self._flush()
        end = len(self.text) if finished else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta
