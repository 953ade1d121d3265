"""vLLM's ``POST /tokenize`` and ``POST /detokenize`` (served at the root, beside ``/v1``).

``/tokenize``: ``{model, prompt, add_special_tokens?=true, return_token_strs?=false}`` or ``{model, messages,
add_generation_prompt?=true, add_special_tokens?=false, return_token_strs?}`` → ``{count, max_model_len,
tokens, token_strs}``. ``/detokenize``: ``{model, tokens}`` → ``{prompt}``. Both go through the core to the
model as one request carrying the ``task`` parameter (see :mod:`nereid.backends.llm.tasks`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nereid.proto import model_config_pb2 as mc
from nereid.server.openai.bridge import read_delta, split_model
from nereid.server.openai.errors import bad_request
from nereid.server.openai.fields import flag, obj, token_ids
from nereid.server.openai.protocol import parse_messages
from nereid.server.textgen import MESSAGES
from nereid.server.types import InferRequest, InferResponse, Tensor

#: Backends that answer the ``task`` parameter.
TOKENIZER_BACKENDS: set[str] = {"llm"}


def tokenizer_request(kind: str, body: Any, config: mc.ModelConfig) -> InferRequest:
    """The InferRequest of a ``tokenize`` or ``detokenize`` body (400 for a bad body or model)."""
    body = obj(body)
    model = body["model"]
    if config.backend not in TOKENIZER_BACKENDS:
        raise bad_request(f"model '{model}' has no tokenizer this server can reach", "model")
    parameters: dict[str, Any] = {"task": kind}
    inputs: list[Tensor] = []
    if kind == "detokenize":
        ids = np.array(token_ids(body.get("tokens"), "tokens", allow_empty=True), dtype=np.int64)
        inputs.append(Tensor("input_ids", "INT64", ids.shape, ids))
    elif body.get("messages") is not None:
        parameters[MESSAGES] = parse_messages(body.get("messages"))
        parameters["add_generation_prompt"] = body.get("add_generation_prompt", True) is not False
        parameters["add_special_tokens"] = flag(body, "add_special_tokens")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise bad_request("'prompt' (a string) or 'messages' is required", "prompt")
        data = np.empty(1, dtype=object)
        data[0] = prompt.encode()
        inputs.append(Tensor("text_input", "BYTES", (1,), data))
        parameters["add_special_tokens"] = body.get("add_special_tokens", True) is not False
    if kind == "tokenize":
        parameters["return_token_strs"] = flag(body, "return_token_strs")
    name, version = split_model(model)
    return InferRequest(model_name=name, model_version=version, inputs=inputs, parameters=parameters)


def tokenizer_body(kind: str, response: InferResponse, request: InferRequest) -> dict[str, Any]:
    if kind == "detokenize":
        return {"prompt": read_delta(response).text}
    params = response.parameters
    strs = params.get("token_strs") if request.parameters.get("return_token_strs") else None
    return {
        "count": params.get("count"),
        "max_model_len": params.get("max_model_len"),
        "tokens": list(params.get("token_ids") or []),
        "token_strs": strs,
    }
