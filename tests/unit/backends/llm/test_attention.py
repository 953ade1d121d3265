"""paged_attention against plain causal attention over each sequence's whole K/V, however the batch is cut."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nereid.backends.llm import native
from nereid.backends.llm.attention import AttentionMetadata, _attend_decodes, decode_groups, paged_attention

HEADS, KV_HEADS, HEAD_DIM, BS = 4, 2, 8, 4


def test_decode_groups_bound_the_padding() -> None:
    assert decode_groups([]) == [0]
    assert decode_groups([5]) == [0, 1]
    assert decode_groups([10, 12, 19, 21, 40, 41, 100, 900]) == [0, 3, 6, 7, 8]
    assert decode_groups([3, 7, 15, 31, 63, 127, 255], max_groups=4) == [0, 1, 2, 3, 7]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of a whole sequence: q [n, heads, hd], k/v [n, kv_heads, hd]."""
    group = HEADS // KV_HEADS
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
    )
    return o.transpose(0, 1)


needs_native = pytest.mark.skipif(not native.load(), reason="the native kernels did not build here")


@pytest.mark.parametrize(
    ("grouped", "use_native"), [(False, False), (True, False), pytest.param(False, True, marks=needs_native)]
)
def test_decodes_and_prefill_chunks_match_full_attention(grouped: bool, use_native: bool) -> None:
    torch.manual_seed(0)
    # Sequences with (tokens already cached, new tokens this step): three decodes with very different
    # contexts, a fresh prefill and a prefill chunk that continues an earlier one.
    plan = [(2, 1), (3, 1), (29, 1), (0, 6), (5, 3)]
    full = [
        (torch.randn(c + n, HEADS, HEAD_DIM), torch.randn(c + n, KV_HEADS, HEAD_DIM), torch.randn(c + n, KV_HEADS, HEAD_DIM))
        for c, n in plan
    ]  # fmt: skip
    num_blocks = sum(-(-(c + n) // BS) for c, n in plan) + 1
    cache = torch.zeros(2, num_blocks, BS, KV_HEADS, HEAD_DIM)
    tables, next_block, slots, starts, ctx = [], 1, [], [0], []
    for (c, n), (_, k, v) in zip(plan, full, strict=True):
        table = list(range(next_block, next_block + -(-(c + n) // BS)))
        next_block += len(table)
        for p in range(c):  # earlier steps' K/V, already in the cache
            cache[0, table[p // BS], p % BS], cache[1, table[p // BS], p % BS] = k[p], v[p]
        slots += [table[p // BS] * BS + p % BS for p in range(c, c + n)]
        tables.append(table)
        starts.append(starts[-1] + n)
        ctx.append(c + n)
    width = max(map(len, tables))
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        context_lens=torch.tensor(ctx),
        query_start_loc=starts,
        context_lens_cpu=ctx,
        num_decodes=3,
        block_size=BS,
        decode_groups=decode_groups(ctx[:3]) if grouped else [],
        native_decode=use_native,
    )
    assert not grouped or len(meta.decode_groups) > 2
    new = [(q[c:], k[c:], v[c:]) for (c, _), (q, k, v) in zip(plan, full, strict=True)]
    q, k, v = (torch.cat([x[i] for x in new]) for i in range(3))
    out = paged_attention(q, k, v, cache, meta)
    for i, ((c, n), (fq, fk, fv)) in enumerate(zip(plan, full, strict=True)):
        expected = reference(fq, fk, fv)[c:]
        torch.testing.assert_close(out[starts[i] : starts[i] + n], expected, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"), [(9, 3, 64), (8, 8, 64), (16, 2, 128), (6, 2, 48)]
)
def test_native_decode_reads_the_paged_cache_like_the_gathering_path(
    dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int
) -> None:
    """The C++ kernel (vectorised for head_dim 64 / 128, scalar otherwise) against gather + SDPA, on contexts
    that end mid-block, span many scattered blocks, or hold a single token."""
    torch.manual_seed(1)
    bs, blocks, lens = 8, 64, torch.tensor([1, 7, 8, 9, 100, 257])
    cache = torch.randn(2, blocks, bs, kv_heads, head_dim).to(dtype)
    width = -(-int(lens.max()) // bs)
    tables = torch.stack([torch.randperm(blocks)[:width] for _ in lens])
    q = torch.randn(len(lens), heads, head_dim).to(dtype)
    expected = _attend_decodes(q.float(), cache.float(), tables, lens, int(lens.max()), bs)
    out = _attend_decodes(q, cache, tables, lens, 0, bs, use_native=True)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bfloat16: the output's own rounding
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [100, 999])
def test_native_decode_of_one_long_sequence_split_across_threads(dtype: torch.dtype, length: int) -> None:
    """One sequence has too few (sequence, KV head) pairs for the threads: its context is cut into parts
    attended separately and combined from their maxima and sums — it must equal the whole."""
    torch.manual_seed(length)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bs, blocks = 8, 200
        cache = torch.randn(2, blocks, bs, 3, 64).to(dtype)
        lens = torch.tensor([length])
        tables = torch.randperm(blocks)[None, : -(-length // bs)]
        q = torch.randn(1, 9, 64).to(dtype)
        expected = _attend_decodes(q.float(), cache.float(), tables, lens, length, bs)
        out = _attend_decodes(q, cache, tables, lens, 0, bs, use_native=True)
    finally:
        torch.set_num_threads(threads)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


@needs_native
def test_native_decode_rejects_what_it_cannot_read() -> None:
    cache = torch.zeros(2, 4, 8, 2, 64)
    q, tables, lens = torch.zeros(1, 4, 64), torch.zeros(1, 2, dtype=torch.long), torch.tensor([16])
    with pytest.raises(RuntimeError, match="one dtype"):
        native.paged_decode_attention(q.bfloat16(), cache, tables, lens, 0.125)
    with pytest.raises(RuntimeError, match="exceeds its block table"):
        native.paged_decode_attention(q, cache, tables, torch.tensor([17]), 0.125)
    with pytest.raises(RuntimeError, match="int64"):
        native.paged_decode_attention(q, cache, tables.int(), lens, 0.125)
