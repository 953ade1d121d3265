"""OpenAI response bodies and stream chunks for one call, built from the backend's deltas."""

from __future__ import annotations

import time
import uuid
from typing import Any

from nereid.server.openai.bridge import Delta
from nereid.server.openai.protocol import CompletionCall
from nereid.server.textgen import TokenLogprob, TopLogprob


class Reply:
    """Accumulates one call's deltas; gives stream chunks as they come, or the whole body at the end."""

    def __init__(self, gen: CompletionCall, model: str) -> None:
        self.chat = gen.chat
        self.id = f"{'chatcmpl' if gen.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.top = gen.logprobs
        self.include_usage = gen.include_usage
        self.texts: list[str] = []
        self.logprobs: dict[str, list[Any]] | None = None
        if self.top is not None:
            keys = ("content",) if gen.chat else ("tokens", "token_logprobs", "top_logprobs", "text_offset")
            self.logprobs = {key: [] for key in keys}
        self.offset = 0  # text_offset of the next token (completions logprobs)
        self.finish_reason: str | None = None
        self.generated = 0
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = None

    # ---- accumulation ------------------------------------------------------------------------

    def add(self, delta: Delta) -> dict[str, Any] | None:
        """Record ``delta``; its stream chunk, or None when it carries nothing to send."""
        self.texts.append(delta.text)
        self.generated += len(delta.token_ids)
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            if getattr(delta, key) is not None:
                setattr(self, key, getattr(delta, key))
        self.finish_reason = delta.finish_reason or self.finish_reason
        logprobs = self._logprobs(delta.logprobs or [])
        if not (delta.text or logprobs or delta.finish_reason):
            return None
        return self._chunk(delta.text, logprobs, delta.finish_reason)

    def _logprobs(self, entries: list[TokenLogprob]) -> dict[str, list[Any]] | None:
        if self.logprobs is None or not entries:
            return None
        if self.chat:
            piece: dict[str, list[Any]] = {"content": [self._chat_entry(e) for e in entries]}
        else:
            piece = {key: [] for key in self.logprobs}
            for e in entries:
                top = {t.token: t.logprob for t in e.top_logprobs[: self.top]}
                top.setdefault(e.token, e.logprob)
                for key, value in zip(piece, (e.token, e.logprob, top, self.offset), strict=True):
                    piece[key].append(value)
                self.offset += len(e.token)
        for key, values in piece.items():
            self.logprobs[key].extend(values)
        return piece

    def _chat_entry(self, e: TokenLogprob) -> dict[str, Any]:
        tops = [_token_logprob(t) for t in e.top_logprobs[: self.top]]
        return {**_token_logprob(e), "top_logprobs": tops}

    # ---- streaming ---------------------------------------------------------------------------

    def _chunk(self, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": {"content": text} if text else {}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        chunk = self._head("chat.completion.chunk" if self.chat else "text_completion")
        chunk["choices"] = [choice]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def opening_chunks(self) -> list[dict[str, Any]]:
        """Chat streams open with the assistant role (OpenAI sends it before any content)."""
        if not self.chat:
            return []
        chunk = self._chunk("", None, None)
        chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return [chunk]

    def closing_chunks(self) -> list[dict[str, Any]]:
        """A finish_reason if no delta brought one, then the usage chunk when it was asked for."""
        chunks = []
        if self.finish_reason is None:
            self.finish_reason = "stop"
            chunks.append(self._chunk("", None, "stop"))
        if self.include_usage:
            chunk = self._head("chat.completion.chunk" if self.chat else "text_completion")
            chunk.update(choices=[], usage=self.usage())
            chunks.append(chunk)
        return chunks

    # ---- whole responses ---------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        text = "".join(self.texts)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=self.logprobs, finish_reason=self.finish_reason or "stop")
        body = self._head("chat.completion" if self.chat else "text_completion")
        body.update(choices=[choice], usage=self.usage())
        return body

    def usage(self) -> dict[str, Any]:
        prompt = self.prompt_tokens or 0
        completion = self.completion_tokens if self.completion_tokens is not None else self.generated
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def _token_logprob(e: TokenLogprob | TopLogprob) -> dict[str, Any]:
    return {"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode("utf-8"))}
