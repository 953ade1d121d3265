"""OpenAI completions and chat bodies, validated into one :class:`CompletionCall`.

Everything a client can get wrong is caught here as a 400 naming the field; values the model
alone can judge (prompt length, logprobs beyond the engine's limit) are left to the backend.
The non-OpenAI sampling fields are accepted in the body as vLLM does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nereid.server.openai.errors import bad_request
from nereid.server.openai.fields import flag, number, obj, token_ids
from nereid.server.openai.structured import guided_decoding
from nereid.server.openai.tools import Tools, parse_tools
from nereid.server.textgen import ChatMessage

MAX_TOP_LOGPROBS = 20
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# field: (integer, low, high, low excluded); None means unbounded.
_NUMBERS: dict[str, tuple[bool, float | None, float | None, bool]] = {
    "temperature": (False, 0, None, False),
    "top_p": (False, 0, 1, True),
    "min_p": (False, 0, 1, False),
    "presence_penalty": (False, -2, 2, False),
    "frequency_penalty": (False, -2, 2, False),
    "repetition_penalty": (False, 0, None, True),
    "top_k": (True, -1, None, False),
    "seed": (True, None, None, False),
    "max_tokens": (True, 1, None, False),
    "min_tokens": (True, 0, None, False),
}


@dataclass(slots=True)
class CompletionCall:
    """What one completions or chat call asks for; ``sampling`` holds vLLM SamplingParams keys.

    A call fans out into ``len(prompts) * best_of`` generations (chat: one prompt, the messages); the reply
    keeps the ``n`` best of each prompt's ``best_of`` (by cumulative logprob), indexed prompt-major.
    """

    chat: bool
    model: str
    prompts: list[str | list[int]] = field(default_factory=list)
    """Completions: one text or token-id prompt per entry (a batch); empty for chat."""
    messages: list[ChatMessage] | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top alternatives per token; None: no logprobs at all
    n: int = 1
    best_of: int = 1
    echo: bool = False
    priority: int | None = None
    user: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    tools: Tools | None = None
    """Chat: the declared tools and tool_choice (None: no tools)."""

    @property
    def fan_out(self) -> int:
        """How many generations the call runs."""
        return max(1, len(self.prompts)) * self.best_of


def parse_completion(body: Any) -> CompletionCall:
    gen = _common(obj(body), chat=False)
    gen.prompts = _prompts(body.get("prompt"))
    gen.echo = flag(body, "echo")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported by this server", "suffix")
    gen.logprobs = number(body, "logprobs", True, 0, MAX_TOP_LOGPROBS)
    if gen.echo and gen.logprobs is not None:  # the prompt's logprobs come first, from the prefill
        gen.sampling["prompt_logprobs"] = gen.logprobs
    gen.sampling.setdefault("max_tokens", 16)  # OpenAI's default for completions
    return _finish(gen)


def parse_chat(body: Any) -> CompletionCall:
    gen = _common(obj(body), chat=True)
    gen.messages = parse_messages(body.get("messages"))
    top = number(body, "top_logprobs", True, 0, MAX_TOP_LOGPROBS)
    if flag(body, "logprobs"):
        gen.logprobs = top or 0
    elif top is not None:
        raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    limit = number(body, "max_completion_tokens", True, 1, None)
    if limit is not None:
        gen.sampling["max_tokens"] = limit
    gen.sampling.setdefault("max_tokens", None)  # chat's default: until the context is full
    gen.tools = parse_tools(body)
    forced = gen.tools.guided_decoding() if gen.tools is not None else None
    if forced is not None:
        if "guided_decoding" in gen.sampling:
            raise bad_request(
                "a forced 'tool_choice' cannot be combined with a structured output format", "tool_choice"
            )
        gen.sampling["guided_decoding"] = forced
    return _finish(gen)


def _common(body: dict[str, Any], chat: bool) -> CompletionCall:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model")
    gen = CompletionCall(chat=chat, model=model, stream=flag(body, "stream"))
    options = body.get("stream_options")
    if options is not None:
        if not gen.stream:
            raise bad_request("'stream_options' is only allowed with 'stream': true", "stream_options")
        gen.include_usage = flag(obj(options, "stream_options"), "include_usage", "stream_options")
    gen.n = number(body, "n", True, 1, None) or 1
    best_of = number(body, "best_of", True, 1, None)
    gen.best_of = gen.n if best_of is None else best_of
    if gen.best_of < gen.n:
        raise bad_request(f"'best_of' ({gen.best_of}) must be >= 'n' ({gen.n})", "best_of")
    if gen.stream and gen.best_of > gen.n:
        raise bad_request("'best_of' > 'n' cannot be streamed", "best_of")
    bias = _logit_bias(body.get("logit_bias"))
    if bias:
        gen.sampling["logit_bias"] = bias
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("'user' must be a string", "user")
    gen.user = user
    for key, (integer, low, high, open_low) in _NUMBERS.items():
        value = number(body, key, integer, low, high, open_low)
        if value is not None:
            gen.sampling[key] = value
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise bad_request("'stop' must be a non-empty string or a list of them", "stop")
        gen.sampling["stop"] = stops
    ids = body.get("stop_token_ids")
    if ids is not None:
        gen.sampling["stop_token_ids"] = token_ids(ids, "stop_token_ids", allow_empty=True)
    if body.get("ignore_eos") is not None:
        gen.sampling["ignore_eos"] = flag(body, "ignore_eos")
    gen.priority = number(body, "priority", True, 0, 2**31)
    guided = guided_decoding(body)
    if guided is not None:
        gen.sampling["guided_decoding"] = guided
    return gen


def _finish(gen: CompletionCall) -> CompletionCall:
    if gen.logprobs is not None:
        gen.sampling["logprobs"] = gen.logprobs
    return gen


def _prompts(value: Any) -> list[str | list[int]]:
    """One prompt or a batch: a string, a list of token ids, or a list of either."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise bad_request(
            "'prompt' must be a string, a list of token ids, or a non-empty list of either", "prompt"
        )
    prompts: list[str | list[int]] = []
    for item in value:
        if isinstance(item, str):
            if not item:
                raise bad_request("'prompt' must not be empty", "prompt")
            prompts.append(item)
        elif isinstance(item, list):
            prompts.append(token_ids(item, "prompt"))
        else:
            raise bad_request("'prompt' must be a string, a list of token ids, or a list of either", "prompt")
    return prompts


def _logit_bias(value: Any) -> dict[int, float]:
    """OpenAI's ``{"token id": bias}`` with biases in [-100, 100]; ids the model lacks fail in the backend."""
    if value is None:
        return {}
    out: dict[int, float] = {}
    for key, bias in obj(value, "logit_bias").items():
        if not (isinstance(key, str) and key.isdigit()):
            raise bad_request(f"'logit_bias' keys must be token ids, got {key!r}", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise bad_request(
                f"'logit_bias' values must be numbers in [-100, 100], got {bias!r}", "logit_bias"
            )
        out[int(key)] = float(bias)
    return out


def parse_messages(value: Any) -> list[ChatMessage]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' is required and must be a non-empty list", "messages")
    out: list[ChatMessage] = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        message = obj(item, where)
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(f"{where}.role must be one of {sorted(_ROLES)}, got {role!r}", where)
        content = _content(message.get("content"), role, where)
        name, call_id = message.get("name"), message.get("tool_call_id")
        out.append(
            ChatMessage(
                role,
                content,
                name if isinstance(name, str) else None,
                call_id if isinstance(call_id, str) else None,
                _tool_calls(message.get("tool_calls"), role, where),
            )
        )
    return out


def _tool_calls(value: Any, role: str, where: str) -> list[dict[str, Any]] | None:
    """An assistant message's earlier calls, fed back into the prompt: ``{id, type, function: {name,
    arguments}}`` each."""
    if value is None or value == []:
        return None
    if role != "assistant" or not isinstance(value, list):
        raise bad_request(
            f"{where}.tool_calls must be a list, on an assistant message", f"{where}.tool_calls"
        )
    calls = []
    for i, item in enumerate(value):
        fn = item.get("function") if isinstance(item, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(
                f"{where}.tool_calls[{i}] must have a function with a name", f"{where}.tool_calls"
            )
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            {
                "id": str(item.get("id", "")),
                "type": "function",
                "function": {"name": fn["name"], "arguments": arguments},
            }
        )
    return calls


def _content(value: Any, role: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list):
        texts = [
            part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
            for part in value
        ]
        if not all(isinstance(text, str) for text in texts):
            raise bad_request(
                f"{where}.content: only text parts ({{'type': 'text', 'text': ...}}) are supported", where
            )
        return "\n".join(texts)  # type: ignore[arg-type]
    raise bad_request(f"{where}.content must be a string or a list of text parts", where)
