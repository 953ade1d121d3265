"""Paged-attention building blocks on CPU, each against the form it replaced (or was tried against).

    python bench/llm_attention.py [--threads 1] [--batch 8,32] [--context 256] [--compiled]

SmolLM2-135M's shapes (9 query heads sharing 3 KV heads, head_dim 64, 8-token blocks), bfloat16 and float32:

- ``gather``: one layer's K/V of ``batch`` sequences out of the paged cache: advanced indexing
  (``kv[:, blocks]``, the old form) against one ``index_select`` over the leading axis, keys' and values' blocks together (the engine's);
- ``prefill``: a causal chunk through ``scaled_dot_product_attention`` with 3-D inputs (torch's math path)
  against 4-D inputs (a batch of one: torch's CPU flash kernel, the engine's);
- ``native``: a decode batch's attention as the engine did it before (gather + SDPA, padded to the longest
  context, ``kernels: torch``) against the native C++ kernel that reads the paged cache in place
  (``backends/llm/csrc/paged_attention.cpp``, the engine's default), on contexts spread over ±50%;
- ``decode`` (``--compiled``): the engine's gather + SDPA against attention written as reductions that read
  the cache through the block table and compiled by Inductor (no gathered copy: the design that would halve
  the bytes attention moves, if Inductor's loops were as fast as the copy).

Prints µs per call (median of rounds) and the ratio old/new; see bench/RESULTS.md, "Attention kernels".
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

KV_HEADS, GROUP, HEAD_DIM, BLOCK = 3, 3, 64, 8


def timed(fn: Callable[[], object], calls: int = 20, rounds: int = 5) -> float:
    """Median µs per call over ``rounds`` rounds of ``calls`` calls, after a warm-up."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def row(name: str, old: float, new: float) -> None:
    print(f"{name:<40} {old:>10.0f} {new:>10.0f} {old / new:>7.2f}x", flush=True)


def gather_and_decode(batch: int, context: int, dtype: torch.dtype, compiled: bool) -> None:
    blocks_total = max(6000, batch * context // BLOCK + 1)
    kv = torch.randn(2, blocks_total, BLOCK, KV_HEADS, HEAD_DIM).to(dtype)
    width = context // BLOCK
    tables = torch.stack([torch.randperm(blocks_total)[:width] for _ in range(batch)])
    lens = torch.randint(context - BLOCK, context + 1, (batch,))
    q = torch.randn(batch, KV_HEADS, GROUP, HEAD_DIM).to(dtype)

    def indexed() -> torch.Tensor:
        return kv[:, tables]

    def selected() -> torch.Tensor:
        ids = tables.flatten()
        flat = torch.index_select(kv.view(2 * blocks_total, -1), 0, torch.cat((ids, ids + blocks_total)))
        return flat.view(2, batch, width, BLOCK, KV_HEADS, HEAD_DIM)

    assert torch.equal(indexed(), selected())
    row(f"gather {dtype} b={batch} ctx={context}", timed(indexed), timed(selected))
    if not compiled:
        return

    def engine() -> torch.Tensor:
        x = selected().flatten(2, 3)[:, :, :context].transpose(-3, -2)
        mask = torch.arange(context)[None, :] < lens[:, None]
        return F.scaled_dot_product_attention(q, x[0], x[1], attn_mask=mask[:, None, None, :])

    def reductions(
        q: torch.Tensor, kv: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor
    ) -> torch.Tensor:
        pos = torch.arange(tables.shape[1] * BLOCK)
        blk, off = tables[:, pos // BLOCK], pos % BLOCK
        k, v = kv[0][blk, off].float(), kv[1][blk, off].float()  # read through the table, fused by Inductor
        s = (q.float()[:, None] * k[:, :, :, None, :]).sum(-1) * HEAD_DIM**-0.5
        s = s.masked_fill(~(pos[None, :] < lens[:, None])[:, :, None, None], float("-inf"))
        return (torch.softmax(s, 1)[..., None] * v[:, :, :, None, :]).sum(1).to(q.dtype)

    fused = torch.compile(reductions, dynamic=True)
    error = (fused(q, kv, tables, lens).float() - engine().float()).abs().max().item()
    row(
        f"decode {dtype} b={batch} (err {error:.1e})",
        timed(engine),
        timed(lambda: fused(q, kv, tables, lens)),
    )


def native_decode(batch: int, context: int, dtype: torch.dtype) -> None:
    from nereid.backends.llm import native
    from nereid.backends.llm.attention import _attend_decodes

    if not native.load():
        print("native kernels did not build: no native rows")
        return
    blocks_total = max(6000, 2 * batch * context // BLOCK + 1)
    kv = torch.randn(2, blocks_total, BLOCK, KV_HEADS, HEAD_DIM).to(dtype)
    lens = torch.randint(context // 2, context * 3 // 2 + 1, (batch,)).sort().values
    longest = int(lens.max())
    tables = torch.stack([torch.randperm(blocks_total)[: -(-longest // BLOCK)] for _ in range(batch)])
    q = torch.randn(batch, KV_HEADS * GROUP, HEAD_DIM).to(dtype)

    def gathered() -> torch.Tensor:
        return _attend_decodes(q, kv, tables, lens, longest, BLOCK)

    def in_place() -> torch.Tensor:
        return _attend_decodes(q, kv, tables, lens, 0, BLOCK, use_native=True)

    error = (gathered().float() - in_place().float()).abs().max().item()
    row(f"native {dtype} b={batch} (err {error:.1e})", timed(gathered), timed(in_place))


def prefill(length: int, dtype: torch.dtype) -> None:
    heads = KV_HEADS * GROUP
    q, k, v = (torch.randn(n, length, HEAD_DIM).to(dtype) for n in (heads, KV_HEADS, KV_HEADS))

    def three_d() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def four_d() -> torch.Tensor:
        return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=True)[0]

    torch.testing.assert_close(three_d(), four_d(), atol=2e-2, rtol=2e-2)
    row(f"prefill {dtype} {length} tokens", timed(three_d, 10), timed(four_d, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", default="8,32")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument(
        "--compiled", action="store_true", help="also time the Inductor-fused decode attention"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'case':<40} {'old µs':>10} {'new µs':>10} {'ratio':>8}")
    for dtype in (torch.bfloat16, torch.float32):
        for batch in map(int, args.batch.split(",")):
            gather_and_decode(batch, args.context, dtype, args.compiled)
            native_decode(batch, args.context, dtype)
        for length in (64, 256, 512):
            prefill(length, dtype)


if __name__ == "__main__":
    main()
