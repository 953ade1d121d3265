"""The contract with LLM backends (:mod:`nereid.server.textgen`): which models generate text, what we send,
what we read back.

A request carries the prompt as ``text_input`` (BYTES [1]), chat messages or ``input_ids`` (INT64 [-1]), plus
``stream`` (BOOL [1], always true) when the model declares it. Backends in :data:`LLM_BACKENDS` get the typed
form: messages and sampling keys as typed request parameters. Any other text-generating model gets the wire
form (Triton's vLLM signature: ``messages`` and ``sampling_parameters`` as JSON BYTES inputs), the only form
its user code can read. Responses are read in either form (:class:`Delta`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from nereid.proto import model_config_pb2 as mc
from nereid.server.openai.errors import bad_request
from nereid.server.openai.protocol import CompletionCall
from nereid.server.textgen import (
    LOGPROBS,
    MESSAGES,
    PROMPT_LOGPROBS,
    TOKEN_IDS,
    TOOLS,
    TokenLogprob,
    read_logprobs,
    read_token_ids,
)
from nereid.server.types import InferRequest, InferResponse, Tensor

#: Backends whose models are always text generators and speak the typed form; decoupled models that declare
#: a prompt input (`text_input` or `messages`) count too, whatever their backend, and get the wire form.
LLM_BACKENDS: set[str] = {"llm"}


def is_llm(config: mc.ModelConfig) -> bool:
    if config.backend in LLM_BACKENDS:
        return True
    inputs = {spec.name for spec in config.input}
    return config.model_transaction_policy.decoupled and ("text_input" in inputs or "messages" in inputs)


DEFAULT_MAX_N = 8
"""Cap of ``n`` and ``best_of`` when the model config sets no ``max_n`` parameter."""
MAX_PROMPTS = 64
"""Most prompts in one batched completions call."""


def check_fan_out(call: CompletionCall, config: mc.ModelConfig) -> None:
    """400 when ``n``/``best_of`` exceed the model's ``max_n`` parameter or the batch is too large."""
    text = config.parameters["max_n"].string_value if "max_n" in config.parameters else ""
    cap = int(text) if text.strip().isdigit() else DEFAULT_MAX_N
    for key, value in (("n", call.n), ("best_of", call.best_of)):
        if value > cap:
            raise bad_request(f"'{key}' is {value}; model '{call.model}' allows at most {cap}", key)
    if len(call.prompts) > MAX_PROMPTS:
        raise bad_request(f"at most {MAX_PROMPTS} prompts per request, got {len(call.prompts)}", "prompt")


def split_model(model: str) -> tuple[str, str]:
    """OpenAI's model id to (name, version): ``smollm2:2`` is version 2; a plain name lets the core choose."""
    name, sep, version = model.rpartition(":")
    return (name, version) if sep and name and version.isdigit() else (model, "")


def backend_echoes(config: mc.ModelConfig) -> bool:
    """Whether the model prepends the prompt itself (it declares Triton's ``exclude_input_in_output``)."""
    return any(spec.name == "exclude_input_in_output" for spec in config.input)


def to_infer_request(
    call: CompletionCall, config: mc.ModelConfig, request_id: str, index: int
) -> InferRequest:
    """The InferRequest of generation ``index`` of ``call`` (prompt ``index // best_of``, candidate
    ``index % best_of``); 400 when the model cannot take this kind of prompt."""
    inputs_declared = {spec.name for spec in config.input}
    typed = config.backend in LLM_BACKENDS
    sampling = _sampling(call, index % call.best_of)
    parameters: dict[str, Any] = dict(sampling) if typed else {}
    prompt = call.prompts[index // call.best_of] if call.prompts else ""
    if call.messages is not None:
        name, tensor = MESSAGES, None
        if typed:
            parameters[MESSAGES] = call.messages
        else:
            tensor = _text(MESSAGES, orjson.dumps([m.as_dict() for m in call.messages]))
    elif isinstance(prompt, list):
        ids = np.array(prompt, dtype=np.int64)
        name, tensor = "input_ids", Tensor("input_ids", "INT64", ids.shape, ids)
    else:
        name, tensor = "text_input", _text("text_input", prompt.encode())
    if name not in inputs_declared:
        what = {MESSAGES: "chat messages", "input_ids": "token-id prompts"}.get(name, "text prompts")
        param = "messages" if name == MESSAGES else "prompt"
        raise bad_request(f"model '{call.model}' does not accept {what} (it has no '{name}' input)", param)
    if call.echo and isinstance(prompt, list) and not backend_echoes(config):
        raise bad_request(f"model '{call.model}' cannot echo token-id prompts", "echo")
    inputs = [] if tensor is None else [tensor]
    if "stream" in inputs_declared:
        inputs.append(Tensor("stream", "BOOL", (1,), np.array([True])))
    if call.echo and backend_echoes(config):
        inputs.append(Tensor("exclude_input_in_output", "BOOL", (1,), np.array([False])))
    if not typed and "sampling_parameters" in inputs_declared:
        inputs.append(_text("sampling_parameters", orjson.dumps(sampling)))
    if config.max_batch_size > 0:
        for t in inputs:
            t.shape, t.data = (1, *t.shape), t.data.reshape((1, *t.shape))
    if call.priority is not None:
        parameters["priority"] = call.priority
    if call.tools is not None and call.tools.choice != "none":
        if not typed:
            raise bad_request(f"model '{call.model}' does not take tools", "tools")
        parameters[TOOLS] = call.tools.tools
    name, version = split_model(call.model)
    return InferRequest(
        model_name=name, model_version=version, id=request_id, inputs=inputs, parameters=parameters
    )


def _sampling(call: CompletionCall, candidate: int) -> dict[str, Any]:
    """One generation's sampling keys: candidate i of a seeded call uses seed + i (as vLLM's n > 1 does);
    best_of > n needs every token's logprob to rank the candidates."""
    sampling = dict(call.sampling)
    if candidate and sampling.get("seed") is not None:
        sampling["seed"] += candidate
    if call.best_of > call.n and sampling.get("logprobs") is None:
        sampling["logprobs"] = 0
    return sampling


def _text(name: str, value: bytes) -> Tensor:
    data = np.empty(1, dtype=object)
    data[0] = value
    return Tensor(name, "BYTES", (1,), data)


@dataclass(slots=True)
class Delta:
    """What one backend response adds: new text and tokens, and the counts so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    """Echo with logprobs: one per prompt token (the first one's logprob is no value), before any output."""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    index: int = 0
    """Which generation of the call this belongs to (set by the front-end, not read from the response)."""


def read_delta(response: InferResponse, index: int = 0) -> Delta:
    tensor = response.output("text_output")
    text = ""
    if tensor is not None:
        parts = tensor.data.reshape(-1)
        text = "".join(p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in parts)
    params = response.parameters
    return Delta(
        text=text,
        token_ids=read_token_ids(params.get(TOKEN_IDS)),
        logprobs=read_logprobs(params.get(LOGPROBS)),
        prompt_logprobs=read_logprobs(params.get(PROMPT_LOGPROBS)),
        finish_reason=params.get("finish_reason") or None,
        prompt_tokens=_count(params.get("prompt_tokens")),
        completion_tokens=_count(params.get("completion_tokens")),
        cached_tokens=_count(params.get("cached_tokens")),
        index=index,
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
