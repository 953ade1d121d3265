"""The contract with LLM backends: which models generate text, what we send, what we read back.

A request carries the prompt as ``text_input`` (BYTES [1]), ``messages`` (BYTES [1], a JSON list
of chat messages the backend renders with its chat template) or ``input_ids`` (INT64 [-1]), plus
``stream`` (BOOL [1], always true) and ``sampling_parameters`` (BYTES [1], JSON SamplingParams).
Each response carries the new text in ``text_output`` and, in its parameters, ``token_ids`` and
``logprobs`` (JSON strings), the token counts, and ``finish_reason`` on the final one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from nereid.server.model_version import ModelVersion
from nereid.server.openai.errors import bad_request
from nereid.server.openai.protocol import Generation
from nereid.server.types import InferRequest, InferResponse, Tensor

#: Backends whose models are always text generators; decoupled models that declare a prompt
#: input (`text_input` or `messages`) count too, whatever their backend.
LLM_BACKENDS: set[str] = {"llm"}


def is_llm(model: ModelVersion) -> bool:
    if model.config.backend in LLM_BACKENDS:
        return True
    return model.decoupled and ("text_input" in model.inputs or "messages" in model.inputs)


def to_infer_request(gen: Generation, model: ModelVersion, request_id: str) -> InferRequest:
    """The InferRequest for ``gen``; 400 when the model cannot take this kind of prompt."""
    if gen.messages is not None:
        name, tensor = "messages", _text("messages", orjson.dumps(gen.messages))
    elif gen.prompt_ids is not None:
        ids = np.array(gen.prompt_ids, dtype=np.int64)
        name, tensor = "input_ids", Tensor("input_ids", "INT64", ids.shape, ids)
    else:
        name, tensor = "text_input", _text("text_input", (gen.prompt or "").encode())
    if name not in model.inputs:
        what = {"messages": "chat messages", "input_ids": "token-id prompts"}.get(name, "text prompts")
        param = "messages" if name == "messages" else "prompt"
        raise bad_request(f"model '{model.name}' does not accept {what} (it has no '{name}' input)", param)
    inputs = [tensor]
    if "stream" in model.inputs:
        inputs.append(Tensor("stream", "BOOL", (1,), np.array([True])))
    if "sampling_parameters" in model.inputs:
        inputs.append(_text("sampling_parameters", orjson.dumps(gen.sampling)))
    if model.config.max_batch_size > 0:
        for t in inputs:
            t.shape, t.data = (1, *t.shape), t.data.reshape((1, *t.shape))
    parameters: dict[str, Any] = {} if gen.priority is None else {"priority": gen.priority}
    return InferRequest(
        model_name=model.name,
        model_version=model.version_str,
        id=request_id,
        inputs=inputs,
        parameters=parameters,
    )


def _text(name: str, value: bytes) -> Tensor:
    data = np.empty(1, dtype=object)
    data[0] = value
    return Tensor(name, "BYTES", (1,), data)


@dataclass(slots=True)
class Delta:
    """What one backend response adds: new text and tokens, and the counts so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None
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
        token_ids=_json_list(params.get("token_ids")) or [],
        logprobs=_json_list(params.get("logprobs")),
        finish_reason=params.get("finish_reason") or None,
        prompt_tokens=_count(params.get("prompt_tokens")),
        completion_tokens=_count(params.get("completion_tokens")),
        cached_tokens=_count(params.get("cached_tokens")),
    )


def _json_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    parsed = orjson.loads(value) if isinstance(value, str | bytes) else value
    return parsed if isinstance(parsed, list) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
