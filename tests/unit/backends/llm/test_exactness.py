"""Greedy output equals `transformers` `generate()` token for token, however the engine batches and caches."""

from __future__ import annotations

import random

import pytest
import torch

MAX_NEW = 24
LENGTHS = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33]


def random_prompts(lengths: list[int], seed: int = 1, vocab: int = 300) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def assert_matches_reference(outputs, prompts, reference, collect_tokens) -> None:
    for i, (prompt, (expected, trusted)) in enumerate(zip(prompts, reference, strict=True)):
        got = collect_tokens(outputs[str(i)])
        assert len(got) == MAX_NEW, f"prompt {i}: {len(got)} tokens"
        assert trusted >= MAX_NEW // 2, (
            f"prompt {i}: reference near-tie at step {trusted}; pick other prompts"
        )
        assert got[:trusted] == expected[:trusted], f"prompt {i} (length {len(prompt)}) diverged"


def submit_all(engine, prompts, params, priorities=None) -> None:
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params, priority=(priorities or [0] * len(prompts))[i])


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"device": "cuda", "dtype": "float32"}, id="cuda", marks=[pytest.mark.gpu, CUDA]),
        pytest.param({}, id="batched"),
        pytest.param({"block_size": 16}, id="block16"),
        pytest.param(
            {"enable_chunked_prefill": False, "enable_prefix_caching": False, "max_num_batched_tokens": 256},
            id="plain",
        ),
        pytest.param({"max_num_seqs": 1}, id="one-at-a-time"),
    ],
)
def test_batch_matches_transformers(
    overrides, make_engine, llama_dir, hf_greedy, greedy, run, collect_tokens
):
    prompts = random_prompts(LENGTHS)
    engine = make_engine(**overrides)
    submit_all(engine, prompts, greedy(MAX_NEW))
    assert_matches_reference(run(engine), prompts, hf_greedy(llama_dir, prompts, MAX_NEW), collect_tokens)


def test_preemption_recompute_matches(make_engine, llama_dir, hf_greedy, greedy, run, collect_tokens):
    prompts = random_prompts(LENGTHS)
    engine = make_engine(num_kv_blocks=16, max_model_len=64)  # 64 tokens of KV for 12 sequences
    submit_all(engine, prompts, greedy(MAX_NEW))
    outputs = run(engine)
    assert engine.stats().num_preemptions > 0
    assert_matches_reference(outputs, prompts, hf_greedy(llama_dir, prompts, MAX_NEW), collect_tokens)


def test_prefix_cache_hits_match(make_engine, llama_dir, hf_greedy, greedy, run, collect_tokens):
    shared = random_prompts([18], seed=7)[0]
    tails = random_prompts([0, 1, 2, 5, 13], seed=8)
    prompts = [shared + tail for tail in tails] + [
        shared[:16],
        shared[:16],
    ]  # also an exactly block-aligned repeat
    reference = hf_greedy(llama_dir, prompts, MAX_NEW)
    follow_up = prompts[0] + reference[0][0][:10]  # a second turn: hits blocks holding generated tokens
    prompts.append(follow_up)
    reference += hf_greedy(llama_dir, [follow_up], MAX_NEW)
    engine = make_engine()
    outputs = {}
    for i, prompt in enumerate(prompts):  # one after another, so each finds the previous blocks cached
        engine.add_request(str(i), prompt, greedy(MAX_NEW))
        outputs.update(run(engine))
    stats = engine.stats()
    assert stats.prefix_cache_queries == sum(len(p) for p in prompts)
    cached = [outputs[str(i)][-1].num_cached_tokens for i in range(len(prompts))]
    # The 16-token repeats hit only 12: the last token (here a whole block) is recomputed for its logits.
    assert cached == [0, 16, 16, 16, 16, 12, 12, 24]
    assert stats.prefix_cache_hits == sum(cached)
    assert_matches_reference(outputs, prompts, reference, collect_tokens)


def test_chunked_prefill_matches(make_engine, llama_dir, hf_greedy, greedy, run, collect_tokens):
    prompts = random_prompts(LENGTHS)
    engine = make_engine(max_num_batched_tokens=8, max_num_seqs=4)
    submit_all(engine, prompts, greedy(MAX_NEW))
    assert_matches_reference(run(engine), prompts, hf_greedy(llama_dir, prompts, MAX_NEW), collect_tokens)


def test_everything_at_once_matches(make_engine, llama_dir, hf_greedy, greedy, run, collect_tokens):
    """Tiny cache + chunks + shared prefixes + priorities: preemption, revival of cached blocks, chunk offsets."""
    base = random_prompts([20], seed=3)[0]
    prompts = [base[: 5 + 2 * i] + random_prompts([i % 4], seed=i)[0] for i in range(10)]
    engine = make_engine(num_kv_blocks=17, max_model_len=64, max_num_batched_tokens=8, max_num_seqs=6)
    submit_all(engine, prompts, greedy(MAX_NEW), priorities=[i % 3 for i in range(10)])
    outputs = run(engine)
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert_matches_reference(outputs, prompts, hf_greedy(llama_dir, prompts, MAX_NEW), collect_tokens)


def test_qwen2_with_qkv_bias_matches(make_engine, qwen2_dir, hf_greedy, greedy, run, collect_tokens):
    prompts = random_prompts(LENGTHS[::2])
    engine = make_engine(model=str(qwen2_dir), max_num_batched_tokens=16)
    assert engine.checkpoint_config.qkv_bias and engine.checkpoint_config.tie_word_embeddings
    submit_all(engine, prompts, greedy(MAX_NEW))
    assert_matches_reference(run(engine), prompts, hf_greedy(qwen2_dir, prompts, MAX_NEW), collect_tokens)
