"""``weights: q8_0``: GGUF Q8_0-style blocks multiplied by the native VNNI kernel (``csrc/q8_0_linear.cpp``).

Every projection and the LM head hold int8 weights in blocks of 32 along the input dimension with one float
scale per block; each call quantises the activations the same way (int8 per 32-block, their own scale), so an
outlier coarsens only its block, and multiplies them with integer dot products (AVX512-VNNI), per block
int32 x both scales accumulated in float. A decode step reads ~1 byte per weight instead of bfloat16's 2.
The embedding table is the LM head's blocks when tied (rows dequantised on lookup). Measurements:
bench/RESULTS.md ("Q8_0 weights with a VNNI kernel").
"""

from __future__ import annotations

import torch
from torch import nn

from nereid.backends.llm import native

BLOCK = 32
_CHUNK = 64  # the kernel's unit: two blocks interleaved by 4-byte quads


def pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (weight [N, Kp] uint8, scales [N, Kp / 32] float32), Kp = K rounded up to 64.

    ``w ≈ (weight - 128) * scale`` block by block (symmetric, |q| <= 127); within each 64-byte chunk the two
    blocks are interleaved by 4-byte quads (the kernel's lane order). Padding blocks are zero with scale 0.
    """
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"q8_0 weights need the input size ({k}) to be a multiple of {BLOCK}")
    kp = -(-k // _CHUNK) * _CHUNK
    w = torch.nn.functional.pad(w.detach().float(), (0, kp - k)).reshape(n, kp // BLOCK, BLOCK)
    scale = w.abs().amax(-1) / 127
    q = torch.round(w / scale.clamp_min(1e-30)[..., None]).clamp(-127, 127).to(torch.int16) + 128
    q = q.to(torch.uint8).reshape(n, kp // _CHUNK, 2, 8, 4).transpose(2, 3).reshape(n, kp)
    return q.contiguous(), scale.contiguous()


def unpack(weight: torch.Tensor, scales: torch.Tensor, k: int) -> torch.Tensor:
    """The float rows `pack` stands for ([..., Kp] uint8 rows and their scales -> [..., K] float32)."""
    lead, kp = weight.shape[:-1], weight.shape[-1]
    q = weight.reshape(*lead, kp // _CHUNK, 8, 2, 4).transpose(-3, -2).reshape(*lead, kp // BLOCK, BLOCK)
    w = (q.float() - 128) * scales[..., None]
    return w.reshape(*lead, kp)[..., :k]


class Q8_0Linear(nn.Module):
    """``x @ W.T + bias`` with W in Q8_0 blocks (`pack`); the output has x's dtype (float32 or bfloat16)."""

    weight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, in_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def of(cls, linear: nn.Linear) -> Q8_0Linear:
        return cls(*pack(linear.weight), linear.in_features, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = native.q8_0_linear(flat, self.weight, self.scales)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


class Q8_0Embedding(nn.Module):
    """Rows of a Q8_0-packed table dequantised on lookup (a tied LM head shares the same two tensors)."""

    weight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.dim, self.dtype = dim, dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return unpack(self.weight[ids], self.scales[ids], self.dim).to(self.dtype)
