"""Paged-KV bookkeeping: fixed-size blocks, per-sequence block tables, reference counts, prefix caching.

A block is free when no sequence references it (ref_count 0). Free blocks come in two kinds: plain ones, and
*cached* ones that still hold the KV of a full block published under its chained hash; cached free blocks sit
in an LRU queue and are revived on a prefix-cache hit or evicted (oldest first) when plain blocks run out.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable

from nereid.backends.llm.sequence import Sequence

HashFn = Callable[[int, tuple[int, ...]], int]
ROOT_HASH = -1
"""Parent hash of a sequence's first block."""


def default_block_hash(parent_hash: int, token_ids: tuple[int, ...]) -> int:
    """Chained block hash: hash of (parent block's hash, token ids of this full block)."""
    return hash((parent_hash, token_ids))


class Block:
    __slots__ = ("block_id", "hash", "parent_hash", "ref_count", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.reset()

    def reset(self) -> None:
        self.hash: int | None = None
        self.parent_hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


class BlockManager:
    """Owns every KV block. Single owner: the scheduler calls it; nothing here is thread-safe."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        hash_fn: HashFn = default_block_hash,
    ) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[int, int] = {}
        self.prefix_cache_queries = 0
        """Prompt tokens looked up in the prefix cache (counted when the sequence is allocated)."""
        self.prefix_cache_hits = 0
        """Of those, tokens whose KV was found cached."""

    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by sequences (cached free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def _num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _hashes(self, seq: Sequence, num_blocks: int) -> list[int]:
        bs = self.block_size
        while len(seq.block_hashes) < num_blocks:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if i else ROOT_HASH
            seq.block_hashes.append(self.hash_fn(parent, tuple(seq.token_ids[i * bs : (i + 1) * bs])))
        return seq.block_hashes

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Ids of the cached blocks matching the sequence's leading full blocks. No side effects on blocks.

        At least one token is always left to compute, so the last block of an exactly block-aligned prompt
        is never a hit (its logits are needed).
        """
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return []
        bs, hits = self.block_size, []
        max_blocks = (seq.num_tokens - 1) // bs
        hashes = self._hashes(seq, max_blocks)
        for i in range(max_blocks):
            block_id = self._cached.get(hashes[i])
            if block_id is None:
                break
            block = self.blocks[block_id]
            parent = hashes[i - 1] if i else ROOT_HASH
            if block.parent_hash != parent or block.token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break  # hash collision: same hash, different content
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence, num_tokens: int, cached_blocks: Iterable[int] = ()) -> bool:
        """Whether `allocate(seq, num_tokens, cached_blocks)` would succeed."""
        cached = list(cached_blocks)
        revived = sum(1 for b in cached if self.blocks[b].ref_count == 0)
        return self._num_blocks_for(num_tokens) - len(cached) + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int, cached_blocks: Iterable[int] = ()) -> None:
        """First allocation of a waiting sequence: share `cached_blocks` (from `lookup_prefix`), then take
        fresh blocks until the table covers `num_tokens`. Sets `num_computed_tokens = num_cached_tokens` to
        the tokens of the shared blocks."""
        cached = list(cached_blocks)
        if seq.block_table:
            raise RuntimeError(f"{seq.request_id}: already holds blocks")
        if not self.can_allocate(seq, num_tokens, cached):
            raise RuntimeError(f"{seq.request_id}: not enough free KV blocks")
        for block_id in cached:
            self._take(block_id)
        seq.block_table = cached
        seq.num_computed_tokens = seq.num_cached_tokens = len(cached) * self.block_size
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += seq.num_cached_tokens
        self._grow(seq, num_tokens)

    def can_append_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether the table can grow to hold `num_new_tokens` more tokens after the computed ones."""
        need = self._num_blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        if not self.can_append_slots(seq, num_new_tokens):
            raise RuntimeError(f"{seq.request_id}: not enough free KV blocks")
        self._grow(seq, seq.num_computed_tokens + num_new_tokens)

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self._num_blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._pop_free())

    def _pop_free(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)
            block = self.blocks[block_id]
            del self._cached[block.hash]  # type: ignore[arg-type]
            block.reset()
        self.blocks[block_id].ref_count = 1
        return block_id

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._evictable[block_id]  # revive a cached free block
        block.ref_count += 1

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Publish the sequence's blocks that are full of computed KV under their chained hashes."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        hashes = self._hashes(seq, num_full)
        first = num_full
        while first > 0 and self.blocks[seq.block_table[first - 1]].hash is None:
            first -= 1
        bs = self.block_size
        for i in range(first, num_full):
            block = self.blocks[seq.block_table[i]]
            block.hash, block.parent_hash = hashes[i], hashes[i - 1] if i else ROOT_HASH
            block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            self._cached.setdefault(hashes[i], block.block_id)  # a duplicate stays private to its sequence

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Release the blocks past those needed for the first `num_tokens` tokens (rejected speculative
        tokens' slots). Such blocks hold no full computed block, so they were never published or shared."""
        keep = self._num_blocks_for(num_tokens)
        while len(seq.block_table) > keep:
            block = self.blocks[seq.block_table.pop()]
            block.ref_count -= 1
            if block.ref_count == 0:
                block.reset()
                self._free.append(block.block_id)

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; its last blocks become the first candidates for eviction."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count > 0:
                continue
            if block.hash is not None and self._cached.get(block.hash) == block_id:
                self._evictable[block_id] = None
            else:
                block.reset()
                self._free.append(block_id)
        seq.block_table = []

    def check_no_leaks(self, live: Iterable[Sequence] = ()) -> None:
        """Raise RuntimeError unless reference counts equal the references held by `live` sequences and every
        unreferenced block is free exactly once."""
        refs = Counter(b for seq in live for b in seq.block_table)
        problems = [
            f"block {b.block_id}: ref_count {b.ref_count} != {refs[b.block_id]} references"
            for b in self.blocks
            if b.ref_count != refs[b.block_id]
        ]
        free = list(self._free) + list(self._evictable)
        if sorted(free) != sorted(b.block_id for b in self.blocks if b.ref_count == 0):
            problems.append(f"free lists {sorted(free)} disagree with zero reference counts")
        problems += [
            f"hash map entry {h} -> block {b} holding hash {self.blocks[b].hash}"
            for h, b in self._cached.items()
            if self.blocks[b].hash != h
        ]
        if problems:
            raise RuntimeError("KV block accounting broken: " + "; ".join(problems[:10]))
