"""OpenAI completions and chat bodies, validated into one :class:`CompletionCall`.

Everything a client can get wrong is caught here as a 400 naming the field; values the model
alone can judge (prompt length, logprobs beyond the engine's limit) are left to the backend.
The non-OpenAI sampling fields are accepted in the body as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nereid.server.openai.errors import bad_request
from nereid.server.openai.fields import flag, number, obj, token_ids
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
    """What one completions or chat call asks for; ``sampling`` holds vLLM SamplingParams keys."""

    chat: bool
    model: str
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    messages: list[ChatMessage] | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top alternatives per token; None: no logprobs at all
    priority: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)


def parse_completion(body: Any) -> CompletionCall:
    gen = _common(obj(body), chat=False)
    gen.prompt, gen.prompt_ids = _prompt(body.get("prompt"))
    if body.get("echo"):
        raise bad_request("'echo' is not supported by this server", "echo")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported by this server", "suffix")
    gen.logprobs = number(body, "logprobs", True, 0, MAX_TOP_LOGPROBS)
    gen.sampling.setdefault("max_tokens", 16)  # OpenAI's default for completions
    return _finish(gen)


def parse_chat(body: Any) -> CompletionCall:
    gen = _common(obj(body), chat=True)
    gen.messages = _messages(body.get("messages"))
    top = number(body, "top_logprobs", True, 0, MAX_TOP_LOGPROBS)
    if flag(body, "logprobs"):
        gen.logprobs = top or 0
    elif top is not None:
        raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    limit = number(body, "max_completion_tokens", True, 1, None)
    if limit is not None:
        gen.sampling["max_tokens"] = limit
    gen.sampling.setdefault("max_tokens", None)  # chat's default: until the context is full
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad_request(f"'{key}' (function calling) is not supported by this server", key)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad_request("only 'response_format': {'type': 'text'} is supported", "response_format")
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
    n = number(body, "n", True, 1, None)
    if n is not None and n > 1:
        raise bad_request(f"n={n} is not supported: this server returns one choice per request", "n")
    if body.get("logit_bias"):
        raise bad_request("'logit_bias' is not supported by this server", "logit_bias")
    best_of = number(body, "best_of", True, 1, None)
    if best_of is not None and best_of > 1:
        raise bad_request("'best_of' is not supported by this server", "best_of")
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
    return gen


def _finish(gen: CompletionCall) -> CompletionCall:
    if gen.logprobs is not None:
        gen.sampling["logprobs"] = gen.logprobs
    return gen


def _prompt(value: Any) -> tuple[str | None, list[int] | None]:
    """A text prompt, or a token-id prompt; batches of several prompts are refused."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # ["text"] or [[ids]]
    if isinstance(value, str):
        if not value:
            raise bad_request("'prompt' must not be empty", "prompt")
        return value, None
    if isinstance(value, list) and len(value) > 1 and all(isinstance(v, str | list) for v in value):
        raise bad_request("batched prompts are not supported: send one prompt per request", "prompt")
    if isinstance(value, list) and value and not isinstance(value[0], str | list):
        return None, token_ids(value, "prompt")
    raise bad_request("'prompt' must be a string, a list with one string, or a list of token ids", "prompt")


def _messages(value: Any) -> list[ChatMessage]:
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
            )
        )
    return out


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
