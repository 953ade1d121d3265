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
from nereid.server.textgen import LOGPROBS, MESSAGES, TOKEN_IDS, TokenLogprob, read_logprobs, read_token_ids
from nereid.server.types import InferRequest, InferResponse, Tensor

#: Backends whose models are always text generators and speak the typed form; decoupled models that declare
#: a prompt input (`text_input` or `messages`) count too, whatever their backend, and get the wire form.
LLM_BACKENDS: set[str] = {"llm"}


def is_llm(config: mc.ModelConfig) -> bool:
    if config.backend in LLM_BACKENDS:
        return True
    inputs = {spec.name for spec in config.input}
    return config.model_transaction_policy.decoupled and ("text_input" in inputs or "messages" in inputs)


def to_infer_request(call: CompletionCall, config: mc.ModelConfig, request_id: str) -> InferRequest:
    """The InferRequest for ``call`` (no version: the core picks it); 400 when the model cannot take this
    kind of prompt."""
    inputs_declared = {spec.name for spec in config.input}
    typed = config.backend in LLM_BACKENDS
    parameters: dict[str, Any] = dict(call.sampling) if typed else {}
    if call.messages is not None:
        name, tensor = MESSAGES, None
        if typed:
            parameters[MESSAGES] = call.messages
        else:
            tensor = _text(MESSAGES, orjson.dumps([m.as_dict() for m in call.messages]))
    elif call.prompt_ids is not None:
        ids = np.array(call.prompt_ids, dtype=np.int64)
        name, tensor = "input_ids", Tensor("input_ids", "INT64", ids.shape, ids)
    else:
        name, tensor = "text_input", _text("text_input", (call.prompt or "").encode())
    if name not in inputs_declared:
        what = {MESSAGES: "chat messages", "input_ids": "token-id prompts"}.get(name, "text prompts")
        param = "messages" if name == MESSAGES else "prompt"
        raise bad_request(f"model '{call.model}' does not accept {what} (it has no '{name}' input)", param)
    inputs = [] if tensor is None else [tensor]
    if "stream" in inputs_declared:
        inputs.append(Tensor("stream", "BOOL", (1,), np.array([True])))
    if not typed and "sampling_parameters" in inputs_declared:
        inputs.append(_text("sampling_parameters", orjson.dumps(call.sampling)))
    if config.max_batch_size > 0:
        for t in inputs:
            t.shape, t.data = (1, *t.shape), t.data.reshape((1, *t.shape))
    if call.priority is not None:
        parameters["priority"] = call.priority
    return InferRequest(model_name=call.model, id=request_id, inputs=inputs, parameters=parameters)


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
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


def read_delta(response: InferResponse) -> Delta:
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
        finish_reason=params.get("finish_reason") or None,
        prompt_tokens=_count(params.get("prompt_tokens")),
        completion_tokens=_count(params.get("completion_tokens")),
        cached_tokens=_count(params.get("cached_tokens")),
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
