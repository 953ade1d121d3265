"""The fused C++ kernels against the PyTorch ops they replace, in float32 and bfloat16 (`backends/llm/native`).

bfloat16 results must be equal, not close: the kernels round where PyTorch's op-by-op code rounds, so a
bfloat16 model computes the same numbers with them (RMSNorm's sum aside, whose order may move the last bit).
"""

from __future__ import annotations

import pytest
import torch

from nereid.backends.llm import native
from nereid.backends.llm.models.llama import RMSNorm, rotate_half

pytestmark = pytest.mark.skipif(not native.load(), reason="the native kernels did not build here")

DTYPES = [torch.float32, torch.bfloat16]
ROWS = [1, 3, 37]  # one decode, a few, and a prefill chunk with a vector tail per row


def exact_or_one_ulp(out: torch.Tensor, expected: torch.Tensor) -> None:
    tol = 1e-5 if out.dtype == torch.float32 else 2**-7  # bfloat16: one unit in the last place near 1
    torch.testing.assert_close(out.float(), expected.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", [576, 100])
def test_rms_norm_and_its_residual_add(dtype: torch.dtype, rows: int, hidden: int) -> None:
    torch.manual_seed(rows)
    norm = RMSNorm(hidden, 1e-5).to(dtype)
    norm.weight.data = torch.randn(hidden).to(dtype)
    x, delta = torch.randn(rows, hidden).to(dtype) * 3, torch.randn(rows, hidden).to(dtype)
    exact_or_one_ulp(native.rms_norm(x, norm.weight, norm.eps), norm(x))
    total, normed = native.add_rms_norm(x, delta, norm.weight, norm.eps)
    assert torch.equal(total, x + delta)
    exact_or_one_ulp(normed, norm(x + delta))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_silu_mul_equals_swiglu(dtype: torch.dtype, rows: int) -> None:
    torch.manual_seed(rows)
    gate_up = (torch.randn(rows, 2 * 1544) * 4).to(dtype)  # 1544: a 16-wide body and a tail of 8
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    out = native.silu_mul(gate_up)
    if dtype == torch.bfloat16:
        assert torch.equal(out, expected)
    else:
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_rope_write_kv_rotates_like_the_model_and_fills_the_slots(dtype: torch.dtype, rows: int) -> None:
    torch.manual_seed(rows)
    heads, kv_heads, hd, bs, blocks = 9, 3, 64, 8, 16
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * hd).to(dtype)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = (torch.arange(rows) + 11)[:, None].float() * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    cache = torch.zeros(2, blocks, bs, kv_heads, hd, dtype=dtype)
    slots = torch.randperm(blocks * bs)[:rows]
    q, k = native.rope_write_kv(qkv, cos, sin, cache, slots, heads, kv_heads)
    split = qkv.view(rows, heads + 2 * kv_heads, hd)
    qk = split[:, : heads + kv_heads]
    qk = qk * cos + rotate_half(qk) * sin
    assert torch.equal(q, qk[:, :heads]) and torch.equal(k, qk[:, heads:])
    assert torch.equal(cache[0].view(-1, kv_heads, hd)[slots], qk[:, heads:])
    assert torch.equal(cache[1].view(-1, kv_heads, hd)[slots], split[:, heads + kv_heads :])
    untouched = torch.ones(blocks * bs, dtype=torch.bool)
    untouched[slots] = False
    assert not cache[:, :, :, :, :].view(2, -1, kv_heads, hd)[:, untouched].any()


def test_bad_shapes_and_slots_are_refused_and_change_nothing() -> None:
    cache = torch.zeros(2, 2, 4, 1, 8)
    qkv = torch.randn(1, 3 * 8)
    cos = sin = torch.ones(1, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        native.rope_write_kv(qkv, cos, sin, cache, torch.tensor([8]), 1, 1)
    with pytest.raises(RuntimeError, match="one dtype"):
        native.rope_write_kv(qkv.bfloat16(), cos, sin, cache, torch.tensor([0]), 1, 1)
    assert not cache.any()
    with pytest.raises(RuntimeError, match="weight must be"):
        native.rms_norm(torch.randn(2, 8), torch.ones(4), 1e-5)
    with pytest.raises(RuntimeError, match="float32 or bfloat16 only"):
        native.silu_mul(torch.randn(2, 8, dtype=torch.float64))
