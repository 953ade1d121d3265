"""``weights: q8_0``: GGUF Q8_0-style blocks multiplied by the native kernel (``csrc/q8_0_linear.cpp``).

Every projection and the LM head hold int8 weights in blocks of 32 along the input dimension with one float
scale per block. Below `native.q8_0_amx_rows()` rows a call quantises the activations the same way (int8 per
32-block, their own scale), so an outlier coarsens only its block, and multiplies with integer dot products
(AVX512-VNNI), per block int32 x both scales accumulated in float; a decode step reads ~1.1 bytes per weight
instead of bfloat16's 2. From there on (prefill chunks) the kernel dequantises each weight tile to bfloat16
once per call and multiplies on AMX tiles. The embedding table is the LM head's blocks when tied (rows
dequantised on lookup). Measurements: bench/RESULTS.md ("Q8_0 weights with a native VNNI / AMX kernel").
"""

from __future__ import annotations

import torch
from torch import nn

from nereid.backends.llm import native

BLOCK = 32
GROUP = 16  # output rows interleaved together (the kernel's vector width in int32 lanes)


def pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (weight [G, K / 32, 512] uint8, scales [G, K / 32, 16] float32), G = ceil(N / 16).

    ``w ≈ (q - 128) * scale`` block by block (symmetric, |q - 128| <= 127). Rows go in groups of 16; a group's
    block holds 8 quads x 16 rows x 4 bytes (the kernel's lane order). Rows past N are zero with scale 0.
    """
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"q8_0 weights need the input size ({k}) to be a multiple of {BLOCK}")
    g, kb = -(-n // GROUP), k // BLOCK
    w = torch.nn.functional.pad(w.detach().float(), (0, 0, 0, g * GROUP - n)).reshape(g, GROUP, kb, BLOCK)
    scale = w.abs().amax(-1) / 127  # [g, 16, kb]
    q = torch.round(w / scale.clamp_min(1e-30)[..., None]).clamp(-127, 127).to(torch.int16) + 128
    q = q.to(torch.uint8).reshape(g, GROUP, kb, 8, 4).permute(0, 2, 3, 1, 4).reshape(g, kb, 8 * GROUP * 4)
    return q.contiguous(), scale.transpose(1, 2).contiguous()


def unpack_rows(weight: torch.Tensor, scales: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The float rows (indices `rows`, any shape) that `pack` stands for: [*rows.shape, K] float32."""
    g, kb = weight.shape[:2]
    group, lane = rows // GROUP, rows % GROUP
    q = weight.view(g, kb, 8, GROUP, 4)[group, :, :, lane, :]  # [*rows, kb, 8, 4]
    w = (q.float() - 128).reshape(*rows.shape, kb, BLOCK) * scales[group, :, lane][..., None]
    return w.reshape(*rows.shape, kb * BLOCK)


class Q8_0Linear(nn.Module):
    """``x @ W.T + bias`` with W in Q8_0 blocks (`pack`); the output has x's dtype (float32 or bfloat16).

    A subclass for another block format (`q4_1.Q4_1Linear`) sets `pack` and `matmul`."""

    pack = staticmethod(pack)
    matmul = staticmethod(native.q8_0_linear)
    weight: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, scales: torch.Tensor, out_features: int, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1] * BLOCK, out_features
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def of(cls, linear: nn.Linear) -> Q8_0Linear:
        return cls(*cls.pack(linear.weight), linear.out_features, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = self.matmul(flat, self.weight, self.scales, self.out_features)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


class Q8_0Embedding(nn.Module):
    """Rows of a Q8_0-packed table dequantised on lookup (a tied LM head shares the same two tensors)."""

    weight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return unpack_rows(self.weight, self.scales, ids).to(self.dtype)
