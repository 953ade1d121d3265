"""Embeddings from an ``llm`` model (``nereid.task: embedding``, see :mod:`nereid.server.embedding`): one
causal forward pass per input over a scratch KV cache, then last-token / mean / first-token pooling of the
final (normed) hidden states. Runs on the engine's driver thread between steps, so the engine's KV cache,
scheduler and sequences are never touched.
"""

from __future__ import annotations

import numpy as np
import torch

from nereid.backends.llm.attention import AttentionMetadata
from nereid.backends.llm.engine import LLMEngine
from nereid.backends.llm.kv_cache import allocate_kv_cache
from nereid.server.embedding import EMBEDDING_OUTPUT, PROMPTS, EmbeddingSpec, too_long
from nereid.server.errors import InvalidArgument
from nereid.server.types import InferRequest, InferResponse, Tensor


def prompt_ids(request: InferRequest, engine: LLMEngine) -> list[list[int]]:
    """The request's inputs as token ids; InvalidArgument for an empty, unknown-token or too-long one."""
    prompts = request.parameters.get(PROMPTS)
    if not isinstance(prompts, list) or not prompts:
        raise InvalidArgument(f"an embed task needs the parameter '{PROMPTS}' (a non-empty list)")
    vocab = engine.checkpoint_config.vocab_size
    out = []
    for prompt in prompts:
        ids = engine.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise InvalidArgument("an input is empty")
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidArgument(f"token ids must be in [0, {vocab})")
        if len(ids) > engine.max_model_len:
            raise too_long(engine.max_model_len, len(ids))
        out.append(ids)
    return out


@torch.inference_mode()
def hidden_states(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    """Final hidden states [tokens, hidden] of one prompt, computed in a scratch cache of one block."""
    runner = engine.model_runner
    n, dev = len(ids), runner.device
    cache = allocate_kv_cache(engine.checkpoint_config, 1, n, engine.config.torch_dtype(), dev)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n, device=dev),
        block_tables=torch.zeros((1, 1), dtype=torch.long, device=dev),
        context_lens=torch.tensor([n], device=dev),
        query_start_loc=[0, n],
        context_lens_cpu=[n],
        num_decodes=0,
        block_size=n,
    )
    return runner.model(torch.tensor(ids, device=dev), torch.arange(n, device=dev), cache, meta)


def pool(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per prompt; normalisation (after any truncation) is the front-end's."""
    h = hidden.float()
    return h[-1] if pooling == "last" else h[0] if pooling == "cls" else h.mean(0)


def run_embed(request: InferRequest, engine: LLMEngine, spec: EmbeddingSpec) -> InferResponse:
    """The one response of an embed task: pooled, unnormalised ``embedding`` FP32 [inputs, hidden] and
    ``prompt_tokens``."""
    prompts = prompt_ids(request, engine)
    rows = [pool(hidden_states(engine, ids), spec.pooling) for ids in prompts]
    data = torch.stack(rows).cpu().numpy().astype(np.float32)
    tensor = Tensor(EMBEDDING_OUTPUT, "FP32", data.shape, data)
    return InferResponse(
        id=request.id, outputs=[tensor], parameters={"prompt_tokens": sum(len(p) for p in prompts)}
    )
