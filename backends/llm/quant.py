"""Weights kept quantised in memory (`EngineConfig.weights`), multiplied by torch's fused CPU kernels.

``int8``: every projection, the embedding table and the LM head as int8 with one float scale per output row
(``torch.ops.aten._weight_int8pack_mm``). ``int4``: the decoder projections as 4-bit groups of 32 along the
input dimension with a float scale and offset per group (``_weight_int4pack_mm_for_cpu``) — the layout of
GGUF's Q4_1 blocks, so a Q4_1 checkpoint is represented exactly — and the embedding / LM head as int8.
``q8_0``: the projections and LM head in GGUF Q8_0-style blocks times activations quantised per block, by the
native VNNI kernel (`q8_0`; float32 or bfloat16 around it); ``q4_1`` the projections in GGUF Q4_1 blocks
(`q4_1`), the LM head in q8_0. ``float`` keeps the checkpoint dequantised in the
engine dtype. torch's quantised kernels run on CPU in float32;
measurements of memory, speed and agreement with the float model are in bench/RESULTS.md ("Quantised weights").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nereid.backends.llm import native
from nereid.backends.llm.models.llama import LlamaForCausalLM
from nereid.backends.llm.q4_1 import Q4_1Linear
from nereid.backends.llm.q8_0 import BLOCK, Q8_0Embedding, Q8_0Linear

WEIGHTS = ("float", "int8", "int4", "q8_0", "q4_1")
_BLOCK_PROJECTIONS = {"q8_0": Q8_0Linear, "q4_1": Q4_1Linear}
INT4_GROUP = 32
_PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: ``w ≈ q * scale[:, None]``."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class Int8Linear(nn.Module):
    """``x @ (q * scale).T + bias`` without materialising the float weight."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)

    @classmethod
    def of(cls, linear: nn.Linear) -> Int8Linear:
        return cls(*int8_rows(linear.weight.data), linear.bias.data if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


class Int8Embedding(nn.Module):
    """Rows of an int8 table scaled back on lookup (a tied LM head shares the same two tensors)."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[ids].float() * self.scale[ids, None]


class Int4Linear(nn.Module):
    """Asymmetric 4-bit groups along the input dim: ``w = (q - 8) * scale + zero`` per group of 32."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP) -> None:
        super().__init__()
        w = linear.weight.data.float()
        n, k = w.shape
        if k % group:
            raise ValueError(f"int4 weights need the input size ({k}) to be a multiple of {group}")
        g = w.reshape(n, k // group, group)
        low, high = g.amin(-1), g.amax(-1)
        scale = ((high - low) / 15).clamp_min(1e-12)
        q = torch.round((g - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
        self.group, self.out_features = group, n
        self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # The kernel's layout: [k / group, n, (scale, zero)], zero = the value of q == 8.
        self.register_buffer("scales_zeros", torch.stack([scale.T, (low + 8 * scale).T], -1).contiguous())
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.data.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group, self.scales_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize(model: LlamaForCausalLM, weights: str) -> LlamaForCausalLM:
    """Replace the model's float weights by quantised modules, in place; ``float`` leaves it as it is."""
    if weights == "float":
        return model
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    if model.model.embed_tokens.weight.device.type != "cpu":
        raise ValueError(f"weights={weights} runs on CPU only (the fused kernels are torch's CPU ones)")
    if weights in _BLOCK_PROJECTIONS:
        return _quantize_blocks(model, weights)
    make = Int8Linear.of if weights == "int8" else Int4Linear
    _replace_projections(model, make)
    tied = model.config.tie_word_embeddings
    q, scale = int8_rows(model.model.embed_tokens.weight.data)
    model.model.embed_tokens = Int8Embedding(q, scale)  # type: ignore[assignment]
    if tied:
        model.lm_head = Int8Linear(q, scale, None)  # type: ignore[assignment]  # the same tensors, shared
    else:
        model.lm_head = Int8Linear.of(model.lm_head)  # type: ignore[assignment]
    return model


def _replace_projections(model: LlamaForCausalLM, make: Callable[[nn.Linear], nn.Module]) -> None:
    for layer in model.model.layers:
        for path in _PROJECTIONS:
            parent_name, _, child = path.rpartition(".")
            parent = layer.get_submodule(parent_name)
            setattr(parent, child, make(getattr(parent, child)))


def _quantize_blocks(model: LlamaForCausalLM, weights: str) -> LlamaForCausalLM:
    """q8_0 / q4_1: the projections in the format's blocks; the LM head (and a tied embedding) in q8_0 for both:
    SmolLM2's Q4_1 GGUF keeps its tied embedding in Q8_0 (4-bit there: greedy agreement 0.57 instead of 0.9+).
    An untied embedding stays float."""
    linear_cls = _BLOCK_PROJECTIONS[weights]
    if not native.load():
        raise ValueError(
            f"weights={weights} needs the native kernels, which could not be built here (see the log)"
        )
    for linear in model.modules():  # every input size checked first: fail before changing anything
        if isinstance(linear, nn.Linear) and linear.in_features % BLOCK:
            raise ValueError(
                f"weights={weights} needs every input size to be a multiple of {BLOCK}, got {linear.in_features}"
            )
    _replace_projections(model, linear_cls.of)
    table = model.model.embed_tokens.weight
    if model.config.tie_word_embeddings:
        head = Q8_0Linear.of(model.lm_head)
        embed = Q8_0Embedding(head.weight, head.scales, table.dtype)
        model.model.embed_tokens = embed  # type: ignore[assignment]  # the LM head's tensors, shared
        model.lm_head = head  # type: ignore[assignment]
    else:
        model.lm_head = Q8_0Linear.of(model.lm_head)  # type: ignore[assignment]
    return model


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer storage (tied tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        if t.is_mkldnn:  # oneDNN's opaque layout (`prepack`): no storage to share
            total += t.numel() * t.element_size()
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total
