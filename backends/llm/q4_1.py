"""``weights: q4_1``: GGUF Q4_1 blocks multiplied by the native kernel (``csrc/q4_1_linear.cpp``).

Every projection and the LM head hold 4-bit unsigned q (0..15) in blocks of 32 along the input dimension with
a float scale d and min m per block, ``w = d * q + m``: a Q4_1 checkpoint's own blocks (re-derived from the
dequantised float weights: a Q4_1 block's min and max are m and m + 15 d, so the same q come back, d up to a
float rounding). A call quantises the activations per 32-block to int8 with their own scale s and takes per
block ``d * s * sum(q * xq) + m * s * sum(xq)`` with integer dot products (AVX512-VNNI); a decode step reads
0.75 bytes per weight (q8_0: 1.125). Every call takes that integer path (no AMX bfloat16 path, unlike q8_0).
The module is q8_0's with this format's packing and kernel; the LM head and a tied embedding stay q8_0
(`quant`: SmolLM2's Q4_1 GGUF holds them in Q8_0).
"""

from __future__ import annotations

import torch

from nereid.backends.llm import native
from nereid.backends.llm.q8_0 import BLOCK, GROUP, Q8_0Linear


def pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (weight [G, K / 32, 256] uint8, scales [G, K / 32, 32] float32), G = ceil(N / 16).

    ``w ≈ d * q + m`` per block, m the block's min and d = (max - min) / 15. Rows go in groups of 16; a
    group's block is 4 vectors x 16 rows x 4 bytes, byte j of row r in vector v holding element 4v + j in its
    low nibble and element 16 + 4v + j in its high one; scales hold the 16 rows' d, then their m. Rows past N
    are zero with d = m = 0.
    """
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"q4_1 weights need the input size ({k}) to be a multiple of {BLOCK}")
    g, kb = -(-n // GROUP), k // BLOCK
    w = torch.nn.functional.pad(w.detach().float(), (0, 0, 0, g * GROUP - n)).reshape(g, GROUP, kb, BLOCK)
    low = w.amin(-1)  # [g, 16, kb]
    d = (w.amax(-1) - low) / 15
    q = torch.round((w - low[..., None]) / d.clamp_min(1e-30)[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.reshape(g, GROUP, kb, 2, 4, 4)  # [.., half, vector, byte]
    packed = q[..., 0, :, :] | (q[..., 1, :, :] << 4)  # [g, 16, kb, 4, 4]
    packed = packed.permute(0, 2, 3, 1, 4).reshape(g, kb, 4 * GROUP * 4)
    scales = torch.cat([d.transpose(1, 2), low.transpose(1, 2)], -1)  # [g, kb, 32]
    return packed.contiguous(), scales.contiguous()


def unpack_rows(weight: torch.Tensor, scales: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The float rows (indices `rows`, any shape) that `pack` stands for: [*rows.shape, K] float32."""
    g, kb = weight.shape[:2]
    group, lane = rows // GROUP, rows % GROUP
    packed = weight.view(g, kb, 4, GROUP, 4)[group, :, :, lane, :].reshape(*rows.shape, kb, 16)
    q = torch.cat([packed & 15, packed >> 4], -1).float()  # [*rows, kb, 32]
    s = scales.view(g, kb, 2, GROUP)[group, :, :, lane]  # [*rows, kb, 2]
    w = q * s[..., 0:1] + s[..., 1:2]
    return w.reshape(*rows.shape, kb * BLOCK)


class Q4_1Linear(Q8_0Linear):
    """``x @ W.T + bias`` with W in Q4_1 blocks (`pack`); the output has x's dtype (float32 or bfloat16)."""

    pack = staticmethod(pack)
    matmul = staticmethod(native.q4_1_linear)
