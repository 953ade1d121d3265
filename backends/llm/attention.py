"""Paged attention in plain PyTorch, driven by an explicit `AttentionMetadata` passed down the model."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nereid.backends.llm import native


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
    decode_groups: list[int] = field(default_factory=list)
    """Boundaries `[0, ..., num_decodes]` of the groups of decodes attended together: each group's K/V is
    gathered padded to its own longest context (see `decode_groups`); empty means one group."""
    native_decode: bool = False
    """Attend the decodes with the C++ kernel that reads the cache in place (`native`), not gather + SDPA."""

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_cpu)


def decode_groups(context_lens: list[int], max_groups: int = 4) -> list[int]:
    """Split decodes sorted by context length into at most `max_groups` runs whose longest context is at
    most twice their shortest, so one long sequence does not pad the gather of many short ones."""
    bounds = [0]
    for i, n in enumerate(context_lens):
        if i and n > 2 * context_lens[bounds[-1]] and len(bounds) < max_groups:
            bounds.append(i)
    return [*bounds, len(context_lens)] if context_lens else [0]


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store new keys/values [tokens, kv_heads, head_dim] into one layer's cache [2, blocks, bs, kvh, hd]."""
    kvh, hd = k.shape[1], k.shape[2]
    kv_cache[0].view(-1, kvh, hd).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(-1, kvh, hd).index_copy_(0, slot_mapping, v)


def _attend_decodes(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    max_len: int,
    block_size: int,
    use_native: bool = False,
) -> torch.Tensor:
    """One token per sequence ([n, heads, head_dim]) attending to its cached context: read in place by the
    native kernel, or gathered padded to `max_len` and attended by SDPA."""
    n, heads, hd = q.shape
    if use_native:
        return native.paged_decode_attention(q.contiguous(), kv_cache, block_tables, context_lens, hd**-0.5)
    kvh = kv_cache.shape[-2]
    kc, vc = _gather(kv_cache, block_tables[:, : -(-max_len // block_size)], max_len)
    mask = torch.arange(max_len, device=q.device)[None, :] < context_lens[:, None]
    qd = q.view(n, kvh, heads // kvh, hd)
    return F.scaled_dot_product_attention(qd, kc, vc, attn_mask=mask[:, None, None, :]).reshape(n, heads, hd)


def _gather(kv_cache: torch.Tensor, blocks: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of `blocks` ([..., n]) as two [..., kv_heads, length, head_dim] views of one gathered copy."""
    # One index_select over the leading axis for keys and values together: a row copy per block, 2-3x
    # faster on CPU than advanced indexing (`kv_cache[:, blocks]`), which walks the copy element-wise;
    # on the leading axis (values' blocks offset by `num_blocks`) torch also splits it across threads.
    two, num_blocks, bs, kvh, hd = kv_cache.shape
    flat = blocks.flatten()
    x = torch.index_select(kv_cache.view(two * num_blocks, -1), 0, torch.cat((flat, flat + num_blocks)))
    x = x.view(two, *blocks.shape[:-1], blocks.shape[-1] * bs, kvh, hd)[..., :length, :, :].transpose(-3, -2)
    return x[0], x[1]


@torch.library.custom_op("nereid::paged_decode_attention", mutates_args=("kv_cache",))
def paged_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    use_native: bool,
) -> torch.Tensor:
    """`paged_attention` for a batch of decodes only, as one opaque op over tensors (no Python metadata), so
    that `torch.compile` traces a decode step's layers without a graph break or a guard on context lengths.
    All decodes form one group: K/V are gathered padded to the longest context."""
    write_kv(kv_cache, k, v, slot_mapping)
    max_len = 0 if use_native else int(context_lens.max())
    return _attend_decodes(q, kv_cache, block_tables, context_lens, max_len, block_size, use_native)


@paged_decode_attention.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    use_native: bool,
) -> torch.Tensor:
    return torch.empty_like(q)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    written: bool = False,
) -> torch.Tensor:
    """Write k/v into the cache (unless `written`: already there), then attend each query to its sequence's
    cached context.

    q: [tokens, heads, head_dim]; k, v: [tokens, kv_heads, head_dim]. Grouped-query attention is handled by
    folding the `heads // kv_heads` query heads that share a KV head into the query-length axis, so K/V are
    never copied per head. A prefill chunk with no earlier context (the common case: a new prompt without
    prefix-cache hits) attends to its own k/v directly, causally, without reading the cache back.
    Returns [tokens, heads, head_dim]. Under `torch.compile` (`compiled_decode`, decode-only batches) it is the
    opaque `paged_decode_attention` op.
    """
    if torch.compiler.is_compiling():
        return paged_decode_attention(
            q,
            k,
            v,
            kv_cache,
            meta.slot_mapping,
            meta.block_tables,
            meta.context_lens,
            meta.block_size,
            meta.native_decode,
        )
    if not written:
        write_kv(kv_cache, k, v, meta.slot_mapping)
    heads, hd = q.shape[1], q.shape[2]
    if meta.native_decode and meta.num_decodes == meta.num_seqs:  # decodes only: one call, no copies
        return native.paged_decode_attention(
            q.contiguous(), kv_cache, meta.block_tables, meta.context_lens, hd**-0.5
        )
    kvh = k.shape[1]
    group = heads // kvh
    out = torch.empty_like(q)
    bs, nd = meta.block_size, meta.num_decodes
    if meta.native_decode and nd:
        out[:nd] = _attend_decodes(
            q[:nd], kv_cache, meta.block_tables[:nd], meta.context_lens[:nd], 0, bs, use_native=True
        )
    for a, b in itertools.pairwise([] if meta.native_decode else meta.decode_groups or [0, nd]):
        if a == b:
            continue
        max_len = max(meta.context_lens_cpu[a:b])
        out[a:b] = _attend_decodes(
            q[a:b], kv_cache, meta.block_tables[a:b], meta.context_lens[a:b], max_len, bs
        )
    for i in range(nd, meta.num_seqs):
        start, end = meta.query_start_loc[i], meta.query_start_loc[i + 1]
        ql, ctx = end - start, meta.context_lens_cpu[i]
        if ql == ctx:
            # 4-D inputs (a batch of one): torch's CPU flash kernel; 3-D ones take the math path, 3-9x
            # slower on a 256-token chunk (bench/RESULTS.md, "Issue 17: the three peers in one window").
            o = F.scaled_dot_product_attention(
                q[None, start:end].transpose(1, 2),
                k[None, start:end].transpose(1, 2),
                v[None, start:end].transpose(1, 2),
                is_causal=True,
                enable_gqa=True,
            )
            out[start:end] = o[0].transpose(0, 1)
            continue
        kc, vc = _gather(kv_cache, meta.block_tables[i, : -(-ctx // bs)], ctx)
        # Query j sits at position ctx - ql + j and may see keys 0 .. ctx - ql + j (chunked prefill offset).
        qpos = torch.arange(ctx - ql, ctx, device=q.device)
        mask = torch.arange(ctx, device=q.device)[None, :] <= qpos[:, None]
        qs = q[start:end].view(ql, kvh, group, hd).permute(1, 2, 0, 3).reshape(kvh, group * ql, hd)
        o = F.scaled_dot_product_attention(qs[None], kc[None], vc[None], attn_mask=mask.repeat(group, 1))
        out[start:end] = o[0].view(kvh, group, ql, hd).permute(2, 0, 1, 3).reshape(ql, heads, hd)
    return out
