"""OpenAI response bodies and stream chunks for one call, built from the backend's deltas."""

from __future__ import annotations

import time
import uuid
from typing import Any

from nereid.server.openai.bridge import Delta
from nereid.server.openai.protocol import CompletionCall
from nereid.server.openai.tools import ToolParser, Tools
from nereid.server.textgen import TokenLogprob, TopLogprob


class _Choice:
    """One generation's accumulated text, logprobs and counts."""

    def __init__(self, chat: bool, top: int | None, echo: str, tools: Tools | None = None) -> None:
        self.texts: list[str] = []
        self.tools = ToolParser(tools) if tools is not None and tools.choice != "none" else None
        self.echo = echo  # the prompt, sent ahead of the first text (echo without the backend's help)
        self.logprobs: dict[str, list[Any]] | None = None
        if top is not None:
            keys = ("content",) if chat else ("tokens", "token_logprobs", "top_logprobs", "text_offset")
            self.logprobs = {key: [] for key in keys}
        self.offset = 0  # text_offset of the next token (completions logprobs)
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.generated = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.cached_tokens: int | None = None

    def take_text(self, text: str) -> str:
        if self.echo:
            text, self.echo = self.echo + text, ""
        self.texts.append(text)
        return text

    @property
    def num_completion_tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.generated


class Reply:
    """Accumulates one call's deltas (``call.fan_out`` generations); gives stream chunks as they come, or
    the whole body at the end, where each prompt keeps the ``n`` best of its ``best_of`` candidates."""

    def __init__(self, call: CompletionCall, model: str, echoes: list[str] | None = None) -> None:
        self.chat = call.chat
        self.id = f"{'chatcmpl' if call.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.top = call.logprobs
        self.n, self.best_of = call.n, call.best_of
        self.include_usage = call.include_usage
        self.echo_logprobs = call.echo and not call.chat and call.logprobs is not None
        echoes = echoes or []
        self.choices = [
            _Choice(call.chat, self.top, echoes[i // self.best_of] if echoes else "", call.tools)
            for i in range(call.fan_out)
        ]

    # ---- accumulation ------------------------------------------------------------------------

    def add(self, delta: Delta) -> dict[str, Any] | None:
        """Record ``delta``; its stream chunk, or None when it carries nothing to send."""
        choice = self.choices[delta.index]
        text = choice.take_text(delta.text)
        choice.generated += len(delta.token_ids)
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            if getattr(delta, key) is not None:
                setattr(choice, key, getattr(delta, key))
        finish_reason = delta.finish_reason
        fields = None
        if choice.tools is not None:
            fields = _merge(choice.tools.feed(text), choice.tools.finish() if finish_reason else {})
            if finish_reason == "stop" and choice.tools.calls:
                finish_reason = "tool_calls"
        choice.finish_reason = finish_reason or choice.finish_reason
        choice.cumulative_logprob += sum(e.logprob for e in delta.logprobs or [])
        prompt = (delta.prompt_logprobs or []) if self.echo_logprobs else []
        logprobs = self._logprobs(choice, delta.logprobs or [], prompt)
        if not ((fields if fields is not None else text) or logprobs or finish_reason):
            return None
        chunk = self._chunk(delta.index, text, logprobs, finish_reason)
        if fields is not None:
            chunk["choices"][0]["delta"] = fields
        return chunk

    def _logprobs(
        self, choice: _Choice, entries: list[TokenLogprob], prompt: list[TokenLogprob]
    ) -> dict[str, list[Any]] | None:
        """This delta's logprobs piece; echoed prompt tokens (``prompt``) come first, the first one with null
        logprob and top_logprobs as OpenAI and vLLM send it."""
        if choice.logprobs is None or not (entries or prompt):
            return None
        if self.chat:
            piece: dict[str, list[Any]] = {"content": [self._chat_entry(e) for e in entries]}
        else:
            piece = {key: [] for key in choice.logprobs}
            for index, e in enumerate([*prompt, *entries]):
                top: dict[str, float] | None = None
                logprob: float | None = None
                if not (prompt and index == 0):
                    top = {t.token: t.logprob for t in e.top_logprobs[: self.top]}
                    top.setdefault(e.token, e.logprob)
                    logprob = e.logprob
                for key, value in zip(piece, (e.token, logprob, top, choice.offset), strict=True):
                    piece[key].append(value)
                choice.offset += len(e.token)
        for key, values in piece.items():
            choice.logprobs[key].extend(values)
        return piece

    def _chat_entry(self, e: TokenLogprob) -> dict[str, Any]:
        tops = [_token_logprob(t) for t in e.top_logprobs[: self.top]]
        return {**_token_logprob(e), "top_logprobs": tops}

    # ---- streaming ---------------------------------------------------------------------------

    def _chunk(self, index: int, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any]
        if self.chat:
            choice = {"index": index, "delta": {"content": text} if text else {}}
        else:
            choice = {"index": index, "text": text}
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        chunk = self._head("chat.completion.chunk" if self.chat else "text_completion")
        chunk["choices"] = [choice]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def opening_chunks(self) -> list[dict[str, Any]]:
        """Chat streams open with the assistant role for every choice (OpenAI sends it before any content)."""
        if not self.chat:
            return []
        chunks = []
        for index in range(len(self.choices)):
            chunk = self._chunk(index, "", None, None)
            chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            chunks.append(chunk)
        return chunks

    def closing_chunks(self) -> list[dict[str, Any]]:
        """A finish_reason for each choice no delta brought one to, then the usage chunk when asked for."""
        chunks = []
        for index, choice in enumerate(self.choices):
            if choice.finish_reason is None:
                choice.finish_reason = "stop"
                chunks.append(self._chunk(index, "", None, "stop"))
        if self.include_usage:
            chunk = self._head("chat.completion.chunk" if self.chat else "text_completion")
            chunk.update(choices=[], usage=self.usage())
            chunks.append(chunk)
        return chunks

    # ---- whole responses ---------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        choices = []
        for index, choice in enumerate(self._kept()):
            text = "".join(choice.texts)
            entry: dict[str, Any] = {"index": index}
            if self.chat:
                entry["message"] = {"role": "assistant", "content": text}
                if choice.tools is not None and choice.tools.calls:
                    entry["message"] = {
                        "role": "assistant",
                        "content": choice.tools.content or None,
                        "tool_calls": choice.tools.calls,
                    }
                elif choice.tools is not None:
                    entry["message"]["content"] = choice.tools.content
            else:
                entry["text"] = text
            entry.update(logprobs=choice.logprobs, finish_reason=choice.finish_reason or "stop")
            choices.append(entry)
        body = self._head("chat.completion" if self.chat else "text_completion")
        body.update(choices=choices, usage=self.usage())
        return body

    def _kept(self) -> list[_Choice]:
        """Per prompt, the ``n`` candidates with the highest cumulative logprob, in candidate order."""
        if self.best_of == self.n:
            return self.choices
        kept = []
        for start in range(0, len(self.choices), self.best_of):
            group = self.choices[start : start + self.best_of]
            best = sorted(range(len(group)), key=lambda i: -group[i].cumulative_logprob)[: self.n]
            kept += [group[i] for i in sorted(best)]
        return kept

    def usage(self) -> dict[str, Any]:
        """Prompt tokens once per prompt; completion tokens of every generation run (best_of included)."""
        firsts = self.choices[:: self.best_of]
        prompt = sum(c.prompt_tokens or 0 for c in firsts)
        completion = sum(c.num_completion_tokens for c in self.choices)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        cached = [c.cached_tokens for c in firsts if c.cached_tokens is not None]
        if cached:
            usage["prompt_tokens_details"] = {"cached_tokens": sum(cached)}
        return usage

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def _merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two stream delta fields of one chunk as one: content joined, tool call entries listed in order."""
    out = dict(first)
    if second.get("content"):
        out["content"] = out.get("content", "") + second["content"]
    if second.get("tool_calls"):
        out["tool_calls"] = out.get("tool_calls", []) + second["tool_calls"]
    return out


def _token_logprob(e: TokenLogprob | TopLogprob) -> dict[str, Any]:
    raw = e.bytes if e.bytes is not None else list(e.token.encode("utf-8"))
    return {"token": e.token, "logprob": e.logprob, "bytes": raw}
