"""Decode an :class:`InferRequest` of an ``llm`` model into a prompt and :class:`SamplingParams`.

Both forms of :mod:`nereid.server.textgen` are accepted. Wire form, as Triton's vLLM backend: ``text_input`` |
``messages`` (JSON chat messages) | ``input_ids``; optional ``stream``, ``sampling_parameters`` (JSON object)
and ``exclude_input_in_output`` (default: true when streaming, false otherwise, so a non-streamed answer
starts with the prompt as Triton's vLLM backend does). Typed form: the request parameter ``messages`` holding ``list[ChatMessage]``
instead of the input. Chat messages are rendered with the model's chat template. Sampling keys may also come
as request parameters (typed values or their string forms); the ``sampling_parameters`` input wins.
Every problem raises InvalidArgument with a message naming the input or key.

Priority has one scale, where Triton's meets vLLM's: a lower number runs earlier, arrival order breaks
ties, 0 means "none given". Triton's queue reads it as a priority level (1 highest, 0 the model's default
level) only when ``dynamic_batching`` declares ``priority_levels``, which an ``llm`` model cannot have
(it needs ``max_batch_size: 0``), so the number reaches the engine unchanged (:func:`engine_priority`) and
0 ranks first there, as vLLM's default does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nereid.backends.llm import chat
from nereid.backends.llm.sampling import GuidedDecodingParams, SamplingParams
from nereid.backends.llm.tokenizer import Tokenizer
from nereid.server.errors import InvalidArgument
from nereid.server.textgen import MESSAGES, TOOLS, ChatMessage
from nereid.server.types import InferRequest

_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
_INTS = ("n", "top_k", "min_tokens")
_OPTIONAL_INTS = ("seed", "max_tokens", "logprobs", "prompt_logprobs")
_BOOLS = ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens")
SAMPLING_KEYS = frozenset(
    (
        *_FLOATS,
        *_INTS,
        *_OPTIONAL_INTS,
        *_BOOLS,
        "stop",
        "stop_token_ids",
        "logit_bias",
        "guided_decoding",
        "structured_outputs",
    )
)


@dataclass(slots=True)
class EngineRequest:
    """One decoded request, ready for ``LLMEngine.add_request``."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool = True
    prompt_text: str = ""
    """Prepended to the output when ``exclude_input_in_output`` is false; empty otherwise."""
    priority: int = 0
    """The engine's rank of the request (see :func:`engine_priority`): lower runs first."""


def parse(request: InferRequest, tokenizer: Tokenizer) -> EngineRequest:
    prompt_ids, prompt_text = _prompt(request, tokenizer)
    stream = _bool_input(request, "stream", True)
    # Triton's vLLM backend: without the input, a non-streamed answer starts with the prompt.
    include_prompt = not _bool_input(request, "exclude_input_in_output", stream)
    return EngineRequest(
        prompt_ids=prompt_ids,
        params=sampling_params(request),
        stream=stream,
        prompt_text=prompt_text if include_prompt else "",
        priority=engine_priority(request),
    )


def engine_priority(request: InferRequest) -> int:
    """The request's priority on the engine's scale, which is the request's own (see the module doc)."""
    return request.priority


def _prompt(request: InferRequest, tokenizer: Tokenizer) -> tuple[list[int], str]:
    typed = _typed_messages(request)
    given = [name for name in ("text_input", "messages", "input_ids") if request.input(name) is not None]
    if typed is not None:
        given.append("messages (parameter)")
    if len(given) != 1:
        raise InvalidArgument(
            f"give exactly one of the inputs 'text_input', 'messages' or 'input_ids' (got {given or 'none'})"
        )
    ids_tensor = request.input("input_ids")
    if ids_tensor is not None:
        ids = [int(t) for t in ids_tensor.data.reshape(-1)]
        return ids, tokenizer.decode(ids, skip_special_tokens=False)
    messages: list[dict[str, Any]]
    if typed is not None:
        messages = [m.as_dict() for m in typed]
    else:
        text = _string_input(request, given[0])
        if given[0] == "text_input":
            return tokenizer.encode(text), text
        messages = _messages(text)
    try:
        rendered = chat.render(tokenizer, messages, _tools(request))
    except ValueError as exc:
        raise InvalidArgument(f"input 'messages': {exc}") from None
    return tokenizer.encode(rendered, add_special_tokens=False), rendered


def _tools(request: InferRequest) -> list[dict[str, Any]] | None:
    """The ``tools`` request parameter (a list of OpenAI tool objects, or its JSON text over the wire)."""
    value = request.parameters.get(TOOLS)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"parameter 'tools' is not valid JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InvalidArgument("parameter 'tools' must be a list of tool objects")
    return value


def _typed_messages(request: InferRequest) -> list[ChatMessage] | None:
    """The typed form's chat messages; a wire client's parameter of that name is ignored, as before."""
    value = request.parameters.get(MESSAGES)
    if isinstance(value, list) and value and all(isinstance(m, ChatMessage) for m in value):
        return value
    return None


def _messages(text: str) -> list[dict[str, Any]]:
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"input 'messages' is not valid JSON: {exc}") from None
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("input 'messages' must be a non-empty JSON list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidArgument(f"input 'messages'[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise InvalidArgument(f"input 'messages'[{i}]: only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        elif content is not None and not isinstance(content, str):
            raise InvalidArgument(f"input 'messages'[{i}]: 'content' must be a string")
        out.append({**message, "content": content or ""})
    return out


def _string_input(request: InferRequest, name: str) -> str:
    tensor = request.input(name)
    assert tensor is not None
    flat = tensor.data.reshape(-1)
    if flat.size != 1:
        raise InvalidArgument(f"input '{name}' must hold exactly one string, got {flat.size}")
    value = flat[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise InvalidArgument(f"input '{name}' is not valid UTF-8") from None


def _bool_input(request: InferRequest, name: str, default: bool) -> bool:
    tensor = request.input(name)
    if tensor is None or tensor.data.size == 0:
        return default
    return bool(tensor.data.reshape(-1)[0])


def sampling_params(request: InferRequest) -> SamplingParams:
    """Request parameters (known sampling keys only) overlaid by the ``sampling_parameters`` input."""
    merged = {k: v for k, v in request.parameters.items() if k in SAMPLING_KEYS}
    if request.input("sampling_parameters") is not None:
        text = _string_input(request, "sampling_parameters")
        try:
            given = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"input 'sampling_parameters' is not valid JSON: {exc}") from None
        if not isinstance(given, dict):
            raise InvalidArgument("input 'sampling_parameters' must be a JSON object")
        unknown = sorted(set(given) - SAMPLING_KEYS)
        if unknown:
            raise InvalidArgument(
                f"unknown sampling parameter '{unknown[0]}' (known: {', '.join(sorted(SAMPLING_KEYS))})"
            )
        merged.update(given)
    if "structured_outputs" in merged:  # vLLM's newer name
        merged.setdefault("guided_decoding", merged.pop("structured_outputs"))
    kwargs = {key: _coerce(key, value) for key, value in merged.items()}
    if kwargs.get("top_k") == 0:  # vLLM: 0 or -1 disables top-k
        kwargs["top_k"] = -1
    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:
        raise InvalidArgument(f"invalid sampling parameters: {exc}") from None


def _coerce(key: str, value: Any) -> Any:
    """Accept JSON numbers/bools and their string forms (Triton's vLLM examples send strings)."""
    try:
        if key in _FLOATS:
            return float(_number(value))
        if key in _INTS or key in _OPTIONAL_INTS:
            if value is None and key in _OPTIONAL_INTS:
                return None
            number = _number(value)
            if int(number) != number:
                raise ValueError
            return int(number)
        if key in _BOOLS:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError
        if key == "stop":
            return _string_list(value)
        if key == "logit_bias":
            return _bias(value)
        if key == "guided_decoding":
            return _guided(value)
        return _int_list(value)  # stop_token_ids
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgument(f"sampling parameter '{key}' has an invalid value {value!r}") from None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError
    return float(value)


def _string_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise ValueError
    return items


def _bias(value: Any) -> dict[int, float]:
    """``{token id: bias}``; JSON gives the ids as strings (and gRPC parameters the whole map as JSON text)."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError
    out = {}
    for key, bias in value.items():
        if isinstance(key, bool) or isinstance(bias, bool) or not isinstance(bias, int | float):
            raise ValueError
        out[int(key)] = float(bias)
    return out


def _guided(value: Any) -> GuidedDecodingParams:
    """vLLM's guided decoding dict (or its JSON text: gRPC parameters carry no objects); a bad one names why."""
    if isinstance(value, GuidedDecodingParams):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError
    try:
        return GuidedDecodingParams.from_dict(value)
    except ValueError as exc:
        raise InvalidArgument(f"sampling parameter 'guided_decoding': {exc}") from None


def _int_list(value: Any) -> list[int]:
    if isinstance(value, str):  # gRPC parameters cannot carry lists: accept a JSON list in a string
        value = json.loads(value)
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ValueError
    return value
