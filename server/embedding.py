"""Embedding models: the config parameters that declare one, read the same way by the front-end and backends.

A model is an embedding model when its config says so::

    parameters { key: "nereid.task" value { string_value: "embedding" } }

Further keys (all optional):

* ``nereid.pooling``: ``mean`` (default for encoders), ``last`` (default for ``llm`` models: the last token's
  hidden state), or ``cls`` (the first token's).
* ``nereid.normalize``: ``true`` (default) scales every embedding to unit L2 norm.
* ``nereid.matryoshka``: ``true`` when the model was trained for truncated outputs; only then does the
  OpenAI ``dimensions`` field work (truncate, then normalise).
* ``nereid.tokenizer``: for models that take token ids (an ONNX or PyTorch encoder with the inputs
  ``input_ids`` and ``attention_mask`` [batch, tokens] and the output token states [batch, tokens, dim] or a
  pooled [batch, dim]): ``package:NAME`` (the tokenizer inside a package's .gguf file), a .gguf file or a
  folder holding tokenizer.json (absolute paths). ``llm`` models use their own tokenizer.
* ``nereid.max_model_len``: the longest input in tokens (encoders; default 512). ``llm`` models use theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument

TASK_KEY = "nereid.task"
EMBEDDING = "embedding"
POOLINGS = ("mean", "last", "cls")
EMBED_TASK = "embed"
"""The request parameter ``task`` value that asks an ``llm`` model for embeddings (typed form, in process)."""
PROMPTS = "prompts"
"""Request parameter of an embed task: ``list[str | list[int]]``."""
EMBEDDING_OUTPUT = "embedding"


def _param(config: mc.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value.strip() if key in config.parameters else None


def is_embedding(config: mc.ModelConfig) -> bool:
    return _param(config, TASK_KEY) == EMBEDDING


@dataclass(frozen=True, slots=True)
class EmbeddingSpec:
    pooling: str
    normalize: bool
    matryoshka: bool
    tokenizer: str | None
    max_model_len: int

    @classmethod
    def of(cls, config: mc.ModelConfig, default_pooling: str = "mean") -> EmbeddingSpec:
        """The model's embedding parameters; InvalidArgument naming a bad one."""
        pooling = _param(config, "nereid.pooling") or default_pooling
        if pooling not in POOLINGS:
            raise InvalidArgument(
                f"parameter 'nereid.pooling' must be one of {list(POOLINGS)}, got {pooling!r}"
            )
        length = _param(config, "nereid.max_model_len") or "512"
        if not length.isdigit() or int(length) < 1:
            raise InvalidArgument(
                f"parameter 'nereid.max_model_len' must be a positive integer, got {length!r}"
            )
        return cls(
            pooling=pooling,
            normalize=_flag(config, "nereid.normalize", True),
            matryoshka=_flag(config, "nereid.matryoshka", False),
            tokenizer=_param(config, "nereid.tokenizer"),
            max_model_len=int(length),
        )


def _flag(config: mc.ModelConfig, key: str, default: bool) -> bool:
    text = _param(config, key)
    if text is None:
        return default
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"parameter '{key}' must be true or false, got {text!r}")


def too_long(max_model_len: int, tokens: int) -> InvalidArgument:
    """vLLM's message for an input past the context length."""
    return InvalidArgument(
        f"This model's maximum context length is {max_model_len} tokens. However, you requested {tokens} "
        "tokens in the input for embedding generation. Please reduce the length of the input."
    )
