"""paged_attention against plain causal attention over each sequence's whole K/V, however the batch is cut."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nereid.backends.llm.attention import AttentionMetadata, decode_groups, paged_attention

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


@pytest.mark.parametrize("grouped", [False, True])
def test_decodes_and_prefill_chunks_match_full_attention(grouped: bool) -> None:
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
    )
    assert not grouped or len(meta.decode_groups) > 2
    new = [(q[c:], k[c:], v[c:]) for (c, _), (q, k, v) in zip(plan, full, strict=True)]
    q, k, v = (torch.cat([x[i] for x in new]) for i in range(3))
    out = paged_attention(q, k, v, cache, meta)
    for i, ((c, n), (fq, fk, fv)) in enumerate(zip(plan, full, strict=True)):
        expected = reference(fq, fk, fv)[c:]
        torch.testing.assert_close(out[starts[i] : starts[i] + n], expected, rtol=1e-5, atol=1e-5)
