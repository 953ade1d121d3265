"""The text-generation contract between front-ends and LLM backends, in two forms.

**Wire form** (Triton's vLLM-backend signature; what generate and gRPC clients send and get): the prompt
is one input ``text_input`` (BYTES [1]), ``messages`` (BYTES [1], a JSON list of chat messages) or
``input_ids`` (INT64 [-1]); ``stream`` (BOOL), ``sampling_parameters`` (BYTES [1], a JSON object of vLLM
SamplingParams keys); sampling keys may also be request parameters. A response carries ``text_output``
(BYTES [1]) and the parameters ``token_ids`` and ``logprobs`` as JSON text, ``prompt_tokens``,
``completion_tokens``, ``cached_tokens``, and ``finish_reason`` (with ``stop_reason``) on the last one.

**Typed form** (in process, nothing parsed twice): chat messages travel as the request parameter
:data:`MESSAGES` holding ``list[ChatMessage]`` (no ``messages`` input), sampling keys as request parameters
with their Python values, and responses carry ``token_ids`` as ``list[int]`` and ``logprobs`` as
``list[TokenLogprob]``. The backends in ``nereid.server.openai.bridge.LLM_BACKENDS`` take and give the typed
form; any other model gets the wire form. Responses leave the process through
:func:`nereid.server.parameters.wire_parameters`, which writes exactly the wire form's JSON text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MESSAGES = "messages"
TOOLS = "tools"
"""Request parameter: the OpenAI tool objects a chat prompt renders (a list; its JSON text over the wire)."""
TOKEN_IDS = "token_ids"
LOGPROBS = "logprobs"
PROMPT_LOGPROBS = "prompt_logprobs"
"""Response parameter: ``list[TokenLogprob]``, one per prompt token, on the response that carries the first
generated token; the first entry's logprob means nothing (no context predicts it; OpenAI shows null)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat message whose content is already plain text (content parts joined)."""

    role: str
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """An assistant message's calls, in OpenAI's shape (``id``, ``type``, ``function.name/arguments``)."""

    def as_dict(self) -> dict[str, Any]:
        """The message as a chat template (and the wire form) sees it: only the keys that are set."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float
    bytes: list[int] | None = None
    """The token's own UTF-8 bytes (``token`` is U+FFFD when they are part of one character); None: unknown
    (then left out of the wire form)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token, its log-probability and the most likely alternatives at its position."""

    token_id: int
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = field(default_factory=list)
    bytes: list[int] | None = None
    """As :attr:`TopLogprob.bytes`."""

    @classmethod
    def from_wire(cls, entry: dict[str, Any]) -> TokenLogprob:
        tops = [
            TopLogprob(t["token_id"], t["token"], t["logprob"], t.get("bytes"))
            for t in entry.get("top_logprobs", [])
        ]
        return cls(entry["token_id"], entry["token"], entry["logprob"], tops, entry.get("bytes"))


def read_token_ids(value: Any) -> list[int]:
    """A response's ``token_ids`` in either form (a model on the Python backend can only send JSON text)."""
    parsed = json.loads(value) if isinstance(value, str | bytes) else value
    return parsed if isinstance(parsed, list) else []


def read_logprobs(value: Any) -> list[TokenLogprob] | None:
    """A response's ``logprobs`` in either form; None when it carries none."""
    parsed = json.loads(value) if isinstance(value, str | bytes) else value
    if not isinstance(parsed, list):
        return None
    return [e if isinstance(e, TokenLogprob) else TokenLogprob.from_wire(e) for e in parsed]
