"""Paged attention in plain PyTorch, driven by an explicit `AttentionMetadata` passed down the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    """Where a flattened batch's tokens come from and where their K/V go.

    The batch holds `num_decodes` single-token sequences first, then prefill chunks. Sequence i owns tokens
    `query_start_loc[i]:query_start_loc[i+1]`, at positions `context_lens[i] - query_len` to
    `context_lens[i] - 1` (its earlier tokens' K/V are already in the cache).
    `slot_mapping[t] = block_id * block_size + offset` is the cache slot of token t; `block_tables[i]` lists
    sequence i's blocks, padded with 0.
    """

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: list[int]
    context_lens_cpu: list[int]
    num_decodes: int
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_cpu)


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store new keys/values [tokens, kv_heads, head_dim] into one layer's cache [2, blocks, bs, kvh, hd]."""
    kvh, hd = k.shape[1], k.shape[2]
    kv_cache[0].view(-1, kvh, hd).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(-1, kvh, hd).index_copy_(0, slot_mapping, v)


def _gather(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """K or V of `blocks` ([..., n]) as [..., kv_heads, length, head_dim]."""
    x = cache[blocks]  # [..., n, bs, kvh, hd]
    x = x.flatten(-4, -3)[..., :length, :, :]
    return x.transpose(-3, -2)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata
) -> torch.Tensor:
    """Write k/v into the cache, then attend each query to its sequence's cached context.

    q: [tokens, heads, head_dim]; k, v: [tokens, kv_heads, head_dim]. Grouped-query attention is handled by
    folding the `heads // kv_heads` query heads that share a KV head into the query-length axis, so K/V are
    never copied per head. Returns [tokens, heads, head_dim].
    """
    write_kv(kv_cache, k, v, meta.slot_mapping)
    heads, hd = q.shape[1], q.shape[2]
    kvh = k.shape[1]
    group = heads // kvh
    out = torch.empty_like(q)
    bs, nd = meta.block_size, meta.num_decodes
    if nd:
        max_len = max(meta.context_lens_cpu[:nd])
        blocks = meta.block_tables[:nd, : -(-max_len // bs)]
        kc, vc = _gather(kv_cache[0], blocks, max_len), _gather(kv_cache[1], blocks, max_len)
        mask = torch.arange(max_len, device=q.device)[None, :] < meta.context_lens[:nd, None]
        qd = q[:nd].view(nd, kvh, group, hd)
        out[:nd] = F.scaled_dot_product_attention(qd, kc, vc, attn_mask=mask[:, None, None, :]).reshape(
            nd, heads, hd
        )
    for i in range(nd, meta.num_seqs):
        start, end = meta.query_start_loc[i], meta.query_start_loc[i + 1]
        ql, ctx = end - start, meta.context_lens_cpu[i]
        blocks = meta.block_tables[i, : -(-ctx // bs)]
        kc, vc = _gather(kv_cache[0], blocks, ctx), _gather(kv_cache[1], blocks, ctx)
        # Query j sits at position ctx - ql + j and may see keys 0 .. ctx - ql + j (chunked prefill offset).
        qpos = torch.arange(ctx - ql, ctx, device=q.device)
        mask = torch.arange(ctx, device=q.device)[None, :] <= qpos[:, None]
        qs = q[start:end].view(ql, kvh, group, hd).permute(1, 2, 0, 3).reshape(kvh, group * ql, hd)
        o = F.scaled_dot_product_attention(qs, kc, vc, attn_mask=mask.repeat(group, 1))
        out[start:end] = o.view(kvh, group, ql, hd).permute(2, 0, 1, 3).reshape(ql, heads, hd)
    return out
