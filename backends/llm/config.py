"""Validated configuration: `EngineConfig` (how to serve) and `CheckpointConfig` (what the checkpoint is)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_POSITIVE = (
    "block_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_n",
    "max_grammar_bytes",
    "max_schema_depth",
)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KERNELS = ("auto", "native", "torch")
SPECULATIVE_METHODS = ("ngram", "draft_model")


@dataclass
class SpeculativeConfig:
    """Speculative decoding of one model; the fields and names of vLLM's ``--speculative-config`` JSON.

    Greedy requests only: a request with temperature > 0, penalties, logprobs or unmet ``min_tokens`` decodes
    one token per step as usual, in the same batch (see :mod:`nereid.backends.llm.speculative`).
    """

    method: str = "ngram"
    """``ngram`` (prompt lookup: drafts copied from the request's own tokens) or ``draft_model`` (alias ``draft``)."""
    num_speculative_tokens: int = 4
    """Draft tokens proposed per step (k); the target verifies k + 1 positions in one forward."""
    prompt_lookup_max: int = 4
    """ngram: longest suffix n-gram matched against earlier tokens (tried first)."""
    prompt_lookup_min: int = 1
    """ngram: shortest suffix n-gram tried."""
    model: str | None = None
    """draft_model: the draft checkpoint (Hugging Face directory or .gguf); it must share the target's vocabulary."""
    disable_by_batch_size: int | None = None
    """Speculate only in steps that schedule at most this many sequences (vLLM's name; None: always). On CPU a
    verification chunk takes the per-sequence attention path, so large batches lose more than they gain."""
    draft_num_layers: int | None = None
    """draft_model: keep only the draft's first N decoder layers (a cheap self-draft for tests; Nereid's own)."""

    def __post_init__(self) -> None:
        self.method = "draft_model" if self.method == "draft" else self.method
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(
                f"speculative method must be one of {list(SPECULATIVE_METHODS)}, got {self.method!r}"
            )
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(
                f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got {self.prompt_lookup_min} and "
                f"{self.prompt_lookup_max}"
            )
        if self.method == "draft_model" and not self.model:
            raise ValueError("speculative method draft_model needs 'model' (the draft checkpoint)")
        if self.disable_by_batch_size is not None and self.disable_by_batch_size < 1:
            raise ValueError(f"disable_by_batch_size must be >= 1, got {self.disable_by_batch_size}")
        if self.draft_num_layers is not None and self.draft_num_layers < 1:
            raise ValueError(f"draft_num_layers must be >= 1, got {self.draft_num_layers}")


@dataclass
class EngineConfig:
    """Everything the engine needs to serve one model. Invalid values raise ValueError on construction."""

    model: str
    """Hugging Face layout directory (config.json + *.safetensors) or a .gguf file."""
    tokenizer: str | None = None
    """Directory holding tokenizer.json; defaults to `model` (GGUF files carry their own tokenizer)."""
    dtype: str = "auto"
    """float32 | float16 | bfloat16 | auto (float32 on CPU, bfloat16 or float16 on CUDA)."""
    device: str = "cpu"
    block_size: int = 16
    """Tokens per KV cache block."""
    kv_cache_bytes: int | None = None
    """KV cache size in bytes; takes precedence over `kv_cache_memory_fraction`."""
    kv_cache_memory_fraction: float = 0.25
    """Fraction of the device's free memory (after loading weights) given to the KV cache."""
    num_kv_blocks: int | None = None
    """Exact number of KV blocks; overrides both sizes above (tests, benchmarks)."""
    max_num_seqs: int = 64
    """Most sequences in the running batch."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step (prefill chunks plus decode tokens)."""
    max_model_len: int | None = None
    """Longest prompt + output; defaults to the model's max_position_embeddings."""
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    max_n: int = 1
    """Largest `n` / `best_of` of an OpenAI call (its front-end fans them out into separate requests, so the
    engine itself runs `SamplingParams.n == 1` only; the front-end defaults to 8 when the parameter is unset)."""
    max_logprobs: int = 20
    """Largest `SamplingParams.logprobs` accepted."""
    seed: int = 0
    """Seed of the generator used by requests without their own seed."""
    weights: str = "float"
    """float | int8 | int4 | q8_0 | q4_1: keep the weights quantised in memory (CPU; see `quant`). int8 and int4
    compute in float32; q8_0 and q4_1 (the native block-quantised kernels) in float32 or bfloat16."""
    compile: bool = False
    """Run decode-only steps through `torch.compile` (Inductor, frozen weights; see `compiled_decode`): faster
    single-stream decoding, equal to eager up to float rounding, compiled at load (tens of seconds).
    float32 only."""
    kernels: str = "auto"
    """CPU kernels of the forward pass: native (the engine's C++ kernels, built for this CPU on first use:
    decode attention reading the paged cache in place, and RMSNorm with its residual add, rotary embedding
    with the K/V cache write, and SwiGLU each fused into one pass; the load fails if they cannot be built),
    torch (PyTorch ops only), auto (native where they build, on CPU; torch otherwise)."""
    max_grammar_bytes: int = 64 * 1024
    """Longest guided-decoding schema, regex or grammar (bytes of its text) a request may send."""
    max_schema_depth: int = 32
    """Deepest nesting of objects and lists in a guided-decoding JSON schema."""
    speculative_config: SpeculativeConfig | None = None
    """Speculative decoding (None: off)."""
    num_threads: int | None = None
    """torch's intra-op (OpenMP) threads, set when the engine is built; None keeps torch's default (one per
    core). Process-wide in torch: with several LLMs in one server the last one built sets it."""

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {self.device!r}: {exc}") from None
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.weights not in ("float", "int8", "int4", "q8_0", "q4_1"):
            raise ValueError(f"weights must be float, int8, int4, q8_0 or q4_1, got {self.weights!r}")
        if self.weights in ("q8_0", "q4_1") and (
            self.device != "cpu" or self.dtype not in ("auto", "float32", "bfloat16")
        ):
            raise ValueError(
                f"weights={self.weights} needs device cpu and dtype float32 or bfloat16 (a CPU kernel)"
            )
        if self.weights in ("int8", "int4") and (
            self.device != "cpu" or self.dtype not in ("auto", "float32")
        ):
            raise ValueError(
                f"weights={self.weights} needs device cpu and dtype float32 (torch's CPU kernels)"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")
        if self.kernels == "native" and self.device != "cpu":
            raise ValueError(f"kernels native run on cpu, not {self.device!r}")
        if self.compile and (self.weights != "float" or self.torch_dtype() != torch.float32):
            raise ValueError(
                f"compile needs dtype float32 and weights float (got dtype {self.dtype!r}, weights "
                f"{self.weights!r}): frozen bfloat16 graphs were wrong after a float32 one in the same process"
            )
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
        if self.kv_cache_bytes is not None and self.kv_cache_bytes <= 0:
            raise ValueError(f"kv_cache_bytes must be > 0, got {self.kv_cache_bytes}")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise ValueError(
                f"kv_cache_memory_fraction must be in (0, 1], got {self.kv_cache_memory_fraction}"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}): every running sequence needs one token per step"
            )
        self._check_prefill_budget()

    def _check_prefill_budget(self) -> None:
        if self.enable_chunked_prefill or self.max_model_len is None:
            return
        if self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"without chunked prefill max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_model_len ({self.max_model_len}); enable chunked prefill or raise the budget"
            )

    def resolve_max_model_len(self, model_max: int) -> int:
        """Fix `max_model_len` against the model's position limit (ValueError if it asks for more)."""
        if self.max_model_len is None:
            self.max_model_len = model_max
        elif self.max_model_len > model_max:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's limit of {model_max}")
        self._check_prefill_budget()
        return self.max_model_len

    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        if torch.device(self.device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32


@dataclass
class CheckpointConfig:
    """The Llama-family architecture fields the model code uses, from config.json or GGUF metadata.

    What the checkpoint is, not how Triton serves it: that is the model's ``config.pbtxt`` (``mc.ModelConfig``).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> CheckpointConfig:
        """Build from a Hugging Face config.json dict (llama, mistral, qwen2)."""
        model_type = cfg.get("model_type")
        if model_type not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"unsupported model_type {model_type!r} (supported: llama, mistral, qwen2)")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {cfg.get('hidden_act')!r}")
        sliding = cfg.get("use_sliding_window", model_type == "mistral")
        if model_type != "llama" and sliding and cfg.get("sliding_window") is not None:
            raise ValueError("sliding-window attention is not supported")
        heads = cfg["num_attention_heads"]
        bias = bool(cfg.get("attention_bias", False))
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        eos = cfg.get("eos_token_id")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=(rope or {}).get("rope_theta") or cfg.get("rope_theta", 10000.0),
            rope_scaling=rope,
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            qkv_bias=True if model_type == "qwen2" else bias,
            o_bias=bias and model_type == "llama",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            eos_token_ids=[] if eos is None else [eos] if isinstance(eos, int) else list(eos),
            bos_token_id=cfg.get("bos_token_id"),
        )
