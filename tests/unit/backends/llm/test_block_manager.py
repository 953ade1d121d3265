from __future__ import annotations

import pytest

from nereid.backends.llm.block_manager import BlockManager
from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.sequence import Sequence


def seq(tokens: list[int], name: str = "s") -> Sequence:
    return Sequence(name, tokens, SamplingParams(), max_tokens=16)


def run_prefill(bm: BlockManager, s: Sequence) -> None:
    """Allocate with prefix hits, pretend the model computed every token, publish full blocks."""
    cached = bm.lookup_prefix(s)
    bm.allocate(s, s.num_tokens, cached)
    s.num_computed_tokens = s.num_tokens
    bm.cache_full_blocks(s)


def test_allocate_append_free_reference_counts():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(10)))
    bm.allocate(a, 10)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.usage == pytest.approx(3 / 8)
    a.num_computed_tokens = 10
    bm.append_slots(a, 2)  # 12 tokens still fit in 3 blocks
    assert len(a.block_table) == 3
    bm.append_slots(a, 3)
    assert len(a.block_table) == 4
    bm.check_no_leaks([a])
    bm.free(a)
    assert bm.num_free_blocks == 8 and a.block_table == []
    bm.check_no_leaks()


def test_cannot_allocate_beyond_capacity():
    bm = BlockManager(num_blocks=2, block_size=4)
    s = seq(list(range(9)))
    assert not bm.can_allocate(s, 9)
    with pytest.raises(RuntimeError, match="not enough free KV blocks"):
        bm.allocate(s, 9)
    bm.check_no_leaks()


def test_prefix_hit_shares_blocks_and_counts():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(list(range(10)), "a")
    run_prefill(bm, a)  # blocks 0-1 full and published
    b = seq([*range(8), 99, 98, 97], "b")
    hits = bm.lookup_prefix(b)
    assert hits == a.block_table[:2]
    bm.allocate(b, b.num_tokens, hits)
    assert b.num_cached_tokens == b.num_computed_tokens == 8
    assert [bm.blocks[i].ref_count for i in hits] == [2, 2]
    assert bm.prefix_cache_queries == 10 + 11 and bm.prefix_cache_hits == 8
    bm.check_no_leaks([a, b])
    bm.free(a)
    bm.free(b)
    bm.check_no_leaks()


def test_only_full_blocks_and_never_the_last_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    run_prefill(bm, seq(list(range(8)), "a"))
    assert bm.lookup_prefix(seq(list(range(8)), "same")) != []
    assert len(bm.lookup_prefix(seq(list(range(8)), "same"))) == 1  # 8 tokens: the second block is recomputed
    assert len(bm.lookup_prefix(seq(list(range(9)), "longer"))) == 2
    partial = seq([0, 1, 2], "p")
    run_prefill(bm, partial)
    assert bm.lookup_prefix(seq([0, 1, 2, 5, 6], "q")) == []  # a partial block is never published


def test_chained_hash_depends_on_prefix():
    bm = BlockManager(num_blocks=16, block_size=2)
    run_prefill(bm, seq([1, 2, 3, 4, 5], "a"))
    assert bm.lookup_prefix(seq([9, 9, 3, 4, 5], "b")) == []  # same second block, different parent


def test_hash_collision_is_guarded_by_token_ids():
    bm = BlockManager(num_blocks=16, block_size=4, hash_fn=lambda parent, tokens: 42)  # everything collides
    run_prefill(bm, seq([1, 2, 3, 4, 5], "a"))
    assert bm.lookup_prefix(seq([5, 6, 7, 8, 9], "b")) == []
    assert len(bm.lookup_prefix(seq([1, 2, 3, 4, 9], "c"))) == 1


def test_freed_cached_blocks_are_revived_then_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = seq([1, 2, 3], "a"), seq([7, 8, 9], "b")
    run_prefill(bm, a)
    run_prefill(bm, b)
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 4  # cached blocks count as free
    c = seq([1, 2, 4], "c")
    hits = bm.lookup_prefix(c)
    assert hits == [0]
    bm.allocate(c, c.num_tokens, hits)  # revives block 0 from the LRU queue
    assert bm.blocks[0].ref_count == 1 and c.num_cached_tokens == 2
    d = seq([5, 5, 5], "d")  # needs 2 blocks: the last plain free one, then b's cached block is evicted
    bm.allocate(d, 3)
    assert bm.lookup_prefix(seq([7, 8, 0], "e")) == []  # b's block was evicted
    bm.check_no_leaks([c, d])
    bm.free(c)
    bm.free(d)
    bm.check_no_leaks()


def test_check_no_leaks_reports_lost_references():
    bm = BlockManager(num_blocks=4, block_size=2)
    bm.allocate(seq([1, 2, 3]), 3)
    with pytest.raises(RuntimeError, match="ref_count"):
        bm.check_no_leaks([])


def test_prefix_caching_disabled():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    a = seq([1, 2, 3, 4, 5])
    run_prefill(bm, a)
    assert bm.lookup_prefix(seq([1, 2, 3, 4, 5], "b")) == []
    bm.free(a)
    assert bm.prefix_cache_queries == 0
    bm.check_no_leaks()
