"""OpenAI's ``POST /v1/embeddings`` for models declared ``nereid.task: embedding`` (:mod:`nereid.server.embedding`).

Body: ``{model, input, encoding_format?="float"|"base64", dimensions?, user?}`` where ``input`` is a string, a
list of strings, a list of token ids or a list of such lists. ``llm`` models pool their own hidden states
(an embed task, :mod:`nereid.backends.llm.pooling`); other models are encoders run through the core
(:mod:`nereid.server.openai.encoders`). ``dimensions`` truncates (then normalises) on matryoshka models only.
``base64`` is the little-endian float32 bytes of each vector, as OpenAI sends them.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from nereid.proto import model_config_pb2 as mc
from nereid.server.core import InferenceCore
from nereid.server.embedding import EMBED_TASK, EMBEDDING_OUTPUT, PROMPTS, EmbeddingSpec
from nereid.server.openai.bridge import LLM_BACKENDS, split_model
from nereid.server.openai.encoders import embed, token_ids
from nereid.server.openai.errors import bad_request
from nereid.server.openai.fields import number, obj
from nereid.server.types import InferRequest

MAX_INPUTS = 2048
"""OpenAI's limit on inputs per call."""


@dataclass(slots=True)
class EmbeddingCall:
    model: str
    inputs: list[str | list[int]]
    base64: bool
    dimensions: int | None


def parse_embedding(body: Any) -> EmbeddingCall:
    body = obj(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad_request(f"'encoding_format' must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("'user' must be a string", "user")
    return EmbeddingCall(
        model, _inputs(body.get("input")), fmt == "base64", number(body, "dimensions", True, 1, None)
    )


def _is_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str) or _is_ids(value):
        value = [value]
    what = "'input' must be a string, a list of strings, a list of token ids or a list of token-id lists"
    if not isinstance(value, list) or not value:
        raise bad_request(what, "input")
    if len(value) > MAX_INPUTS:
        raise bad_request(f"at most {MAX_INPUTS} inputs per request, got {len(value)}", "input")
    for item in value:
        if not (isinstance(item, str) and item) and not _is_ids(item):
            raise bad_request(what + " (none empty)", "input")
    return value


async def create_embeddings(
    core: InferenceCore, config: mc.ModelConfig, call: EmbeddingCall
) -> dict[str, Any]:
    """The response body of one call to an embedding model (its config already checked)."""
    name, version = split_model(call.model)
    llm = config.backend in LLM_BACKENDS
    spec = EmbeddingSpec.of(config, "last" if llm else "mean")
    if call.dimensions is not None and not spec.matryoshka:
        raise bad_request(
            f'Model "{call.model}" does not support matryoshka representation, changing output dimensions '
            "will lead to poor results.",
            "dimensions",
        )
    if llm:
        vectors, prompt_tokens = await _llm_embed(core, name, version, call.inputs)
    else:
        ids = token_ids(call.inputs, spec, call.model)
        vectors, prompt_tokens = await embed(core, config, name, version, ids, spec), sum(map(len, ids))
    if call.dimensions is not None:
        if call.dimensions > vectors.shape[1]:
            raise bad_request(
                f"'dimensions' is {call.dimensions}; model '{call.model}' has {vectors.shape[1]}",
                "dimensions",
            )
        vectors = vectors[:, : call.dimensions]
    if spec.normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": call.model,
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, call.base64)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


async def _llm_embed(
    core: InferenceCore, name: str, version: str, inputs: list[str | list[int]]
) -> tuple[np.ndarray, int]:
    request = InferRequest(
        model_name=name, model_version=version, inputs=[], parameters={"task": EMBED_TASK, PROMPTS: inputs}
    )
    response = None
    async for response in core.stream(request):
        if response.error is not None:
            raise response.error
    assert response is not None
    tensor = response.output(EMBEDDING_OUTPUT)
    assert tensor is not None, "an embed task answers with the 'embedding' output"
    return np.asarray(tensor.data, dtype=np.float32), int(response.parameters.get("prompt_tokens", 0))


def _encode(vector: np.ndarray, as_base64: bool) -> list[float] | str:
    if as_base64:
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
