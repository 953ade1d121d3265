"""Llama-architecture decoder (also Mistral and Qwen2) over flattened token batches.

Parameter names match Hugging Face's `LlamaForCausalLM`, except that each layer's q/k/v projections are one
`qkv_proj` and gate/up one `gate_up_proj` (fewer, larger GEMMs per step); `PACKED` says how the loader
stacks the checkpoint's tensors into them.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from nereid.backends.llm import native
from nereid.backends.llm.attention import AttentionMetadata, paged_attention
from nereid.backends.llm.config import CheckpointConfig

PACKED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
"""Fused module → the checkpoint's modules whose weights (and biases) it stacks along the output dim."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # one kernel, same math in fp32
            return nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalised in float32, rounded to the input dtype, then scaled (Hugging Face's order), in 3 kernels.
        h = nn.functional.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: CheckpointConfig) -> torch.Tensor:
    """Rotary inverse frequencies, with Llama-3 style scaling when the config asks for it."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(is_mid, mid, scaled)
    elif kind == "freq_factors":  # llama.cpp stores Llama-3 scaling as per-frequency divisors
        inv_freq = inv_freq / torch.tensor(scaling["factors"], dtype=torch.float32)
    elif kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind != "default":
        raise ValueError(
            f"unsupported rope scaling {kind!r} (supported: default, linear, llama3, freq_factors)"
        )
    return inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """Q, K and V come from one fused `qkv_proj` (the checkpoint's q/k/v_proj, packed by the loader)."""

    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        h = cfg.hidden_size
        qkv = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(h, qkv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=cfg.o_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        fused: bool = False,
    ) -> torch.Tensor:
        """`fused`: the rotary embedding and the K/V cache write as one native kernel."""
        n, heads, kvh = x.shape[0], self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x)
        split = qkv.view(n, heads + 2 * kvh, self.head_dim)
        if fused:
            q, k = native.rope_write_kv(qkv, cos, sin, kv_cache, meta.slot_mapping, heads, kvh)
        else:
            qk = split[:, : heads + kvh]
            qk = qk * cos + rotate_half(qk) * sin  # queries and keys rotated together
            q, k = qk[:, :heads], qk[:, heads:]
        v = split[:, heads + kvh :]
        return self.o_proj(paged_attention(q, k, v, kv_cache, meta, written=fused).view(n, -1))


class MLP(nn.Module):
    """SwiGLU with the checkpoint's gate_proj and up_proj packed into one `gate_up_proj`."""

    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_up_proj = nn.Linear(h, 2 * i, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """`forward(input_ids, positions, kv_cache, meta)` returns final hidden states [tokens, hidden];
    `compute_logits(hidden)` projects the rows that need sampling. `kv_cache` is the whole
    [num_layers, 2, num_blocks, block_size, kv_heads, head_dim] tensor; layer i uses `kv_cache[i]`."""

    fused = False
    """Run `forward` through the native fused kernels (set by the model runner when they are built)."""
    _plan: tuple[tuple[torch.Tensor, float], list[tuple[Any, ...]]] | None = None

    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        freqs = positions[:, None].float() * self.inv_freq[None, :].float()
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [tokens, 1, head_dim]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if self.fused:
            return self._forward_fused(x, cos, sin, kv_cache, meta)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, kv_cache[i], meta)
        return self.model.norm(x)

    def _forward_fused(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """The same layers with each residual add fused into the RMSNorm after it (`x, h = x + delta,
        norm(x + delta)`), the next layer's input norm taking the place of the layer's last add: per layer,
        the four projections and five native kernels instead of ~40 PyTorch ops, called from a flat plan
        (no module dispatch: a single-token step is short enough for Python's per-call cost to show)."""
        first, plan = self._fused_plan()
        h = native.rms_norm(x, *first)
        for i, (qkv_proj, o_proj, gate_up_proj, down_proj, post, after, heads, kvh, hd) in enumerate(plan):
            layer_cache = kv_cache[i]
            qkv = qkv_proj(h)
            q, k = native.rope_write_kv(qkv, cos, sin, layer_cache, meta.slot_mapping, heads, kvh)
            v = qkv.view(-1, heads + 2 * kvh, hd)[:, heads + kvh :]
            attn = o_proj(paged_attention(q, k, v, layer_cache, meta, written=True).view(q.shape[0], -1))
            x, h = native.add_rms_norm(x, attn, *post)
            x, h = native.add_rms_norm(x, down_proj(native.silu_mul(gate_up_proj(h))), *after)
        return h

    def _fused_plan(self) -> tuple[tuple[torch.Tensor, float], list[tuple[Any, ...]]]:
        """Per layer: the four projections' `forward`s, the two norms after them as (weight, eps), and the
        attention's shape. Built on the first fused forward (after the loader has quantised or prepacked the
        projections) and kept."""
        if self._plan is None:
            layers = cast(list[DecoderLayer], list(self.model.layers))
            norms = [*(layer.input_layernorm for layer in layers[1:]), self.model.norm]
            plan: list[tuple[Any, ...]] = []
            for layer, after in zip(layers, norms, strict=True):
                attn, mlp, post = layer.self_attn, layer.mlp, layer.post_attention_layernorm
                plan.append(
                    (
                        attn.qkv_proj.forward,
                        attn.o_proj.forward,
                        mlp.gate_up_proj.forward,
                        mlp.down_proj.forward,
                        (post.weight, post.eps),
                        (after.weight, after.eps),
                        attn.num_heads,
                        attn.num_kv_heads,
                        attn.head_dim,
                    )
                )
            norm = layers[0].input_layernorm
            self._plan = ((norm.weight, norm.eps), plan)
        return self._plan

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
