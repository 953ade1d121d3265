"""Embedding models other than ``llm`` ones: an ONNX or PyTorch encoder taking token ids.

The front-end tokenises with the model's ``nereid.tokenizer`` (see :mod:`nereid.server.embedding`), pads the
batch, runs it through the core as an ordinary (non-decoupled) request with ``input_ids`` and
``attention_mask`` INT64 [batch, tokens], and pools the first output: token states [batch, tokens, dim] by the
configured pooling over the attention mask, or an already pooled [batch, dim] as it is.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nereid.proto import model_config_pb2 as mc
from nereid.server.core import InferenceCore
from nereid.server.embedding import EmbeddingSpec, too_long
from nereid.server.errors import InvalidArgument
from nereid.server.types import InferRequest, Tensor

if TYPE_CHECKING:
    from nereid.backends.llm.tokenizer import Tokenizer

_lock = threading.Lock()


@lru_cache(maxsize=8)
def tokenizer(spec: str) -> Tokenizer:
    """The tokenizer named by ``nereid.tokenizer`` (loaded once per spec; the llm backend's tokenizer code,
    imported lazily so that serving encoders needs torch only when one is configured)."""
    from nereid.backends.llm.gguf_loader import GGUFCheckpoint
    from nereid.backends.llm.serving import resolve_path
    from nereid.backends.llm.tokenizer import Tokenizer

    path = resolve_path(spec, Path("/"), "nereid.tokenizer")
    return GGUFCheckpoint(path).tokenizer() if path.suffix == ".gguf" else Tokenizer.from_dir(path)


def token_ids(prompts: list[str | list[int]], spec: EmbeddingSpec, model: str) -> list[list[int]]:
    if spec.tokenizer is None and any(isinstance(p, str) for p in prompts):
        raise InvalidArgument(
            f"model '{model}' takes token ids only (its config names no 'nereid.tokenizer')"
        )
    tok = tokenizer(spec.tokenizer) if spec.tokenizer else None
    out = []
    for p in prompts:
        if isinstance(p, str):
            assert tok is not None
            with _lock:  # one Rust tokenizer shared by concurrent requests
                ids = tok.encode(p)
        else:
            ids = p
        if len(ids) > spec.max_model_len:
            raise too_long(spec.max_model_len, len(ids))
        if not ids:
            raise InvalidArgument("an input encodes to no tokens")
        out.append(ids)
    return out


async def embed(
    core: InferenceCore,
    config: mc.ModelConfig,
    name: str,
    version: str,
    ids: list[list[int]],
    spec: EmbeddingSpec,
) -> np.ndarray:
    """Pooled, unnormalised embeddings [inputs, dim] of the token-id inputs."""
    step = config.max_batch_size if config.max_batch_size > 0 else len(ids)
    parts = []
    for start in range(0, len(ids), step):
        chunk = ids[start : start + step]
        width = max(len(i) for i in chunk)
        tokens = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, i in enumerate(chunk):
            tokens[row, : len(i)], mask[row, : len(i)] = i, 1
        request = InferRequest(
            model_name=name,
            model_version=version,
            inputs=[
                Tensor("input_ids", "INT64", tokens.shape, tokens),
                Tensor("attention_mask", "INT64", mask.shape, mask),
            ],
        )
        response = await core.infer(request)
        wanted = config.output[0].name if config.output else None
        out = response.output(wanted) if wanted else response.outputs[0]
        if out is None:
            raise InvalidArgument(f"model '{name}' returned no output '{wanted}'")
        parts.append(pool(np.asarray(out.data, dtype=np.float32), mask, spec.pooling))
    return np.concatenate(parts)


def pool(states: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """[batch, tokens, dim] token states (or pooled [batch, dim]) to [batch, dim] over the attention mask."""
    if states.ndim == 2:
        return states
    if pooling == "cls":
        return states[:, 0]
    if pooling == "last":
        return states[np.arange(len(states)), mask.sum(1) - 1]
    weights = mask[..., None].astype(np.float32)
    return (states * weights).sum(1) / weights.sum(1)
