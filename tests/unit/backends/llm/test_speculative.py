"""Speculative decoding (prompt lookup and a draft model): greedy output equals the plain engine's exactly."""

from __future__ import annotations

import random

import pytest

from nereid.backends.llm import SamplingParams
from nereid.backends.llm.config import SpeculativeConfig
from nereid.backends.llm.speculative import ngram_propose


def test_ngram_propose_takes_the_latest_longest_match():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert ngram_propose(tokens, 2, 1, 3) == [7, 8]  # "1 2 3" last seen before 7 8
    assert ngram_propose(tokens, 9, 1, 3) == [7, 8, 5, 1, 2, 3]  # up to the end of the sequence
    assert ngram_propose([4, 5, 6], 3, 1, 2) == []  # no suffix n-gram recurs
    assert ngram_propose([5, 6, 5], 2, 1, 1) == [6, 5]
    assert ngram_propose([5, 6, 5], 2, 2, 3) == []  # below prompt_lookup_min


def test_config_is_validated():
    with pytest.raises(ValueError, match="method"):
        SpeculativeConfig(method="eagle")
    with pytest.raises(ValueError, match="needs 'model'"):
        SpeculativeConfig(method="draft")
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        SpeculativeConfig(prompt_lookup_min=3, prompt_lookup_max=2)
    assert SpeculativeConfig(method="draft", model="x").method == "draft_model"


def prompts() -> list[list[int]]:
    rng = random.Random(3)
    phrase = [rng.randrange(3, 300) for _ in range(9)]
    repeating = [phrase * 3, phrase * 2 + phrase[:4], [7, 8] * 6]
    plain = [[rng.randrange(3, 300) for _ in range(n)] for n in (1, 5, 13, 30)]
    return repeating + plain


def generate(engine, params, run, collect_tokens) -> list[list[int]]:
    for i, prompt in enumerate(prompts()):
        engine.add_request(str(i), prompt, params)
    outputs = run(engine)
    return [collect_tokens(outputs[str(i)]) for i in range(len(prompts()))]


NGRAM = SpeculativeConfig(method="ngram", num_speculative_tokens=3, prompt_lookup_max=3)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="batched"),
        pytest.param({"max_num_seqs": 1}, id="one-at-a-time"),
        pytest.param({"num_kv_blocks": 20, "max_model_len": 64}, id="preempting"),
        pytest.param({"block_size": 16, "enable_prefix_caching": False}, id="block16"),
    ],
)
def test_ngram_greedy_equals_plain_decoding(overrides, make_engine, greedy, run, collect_tokens):
    expected = generate(make_engine(**overrides), greedy(24), run, collect_tokens)
    engine = make_engine(speculative_config=NGRAM, **overrides)
    assert generate(engine, greedy(24), run, collect_tokens) == expected
    stats = engine.stats()
    assert stats.spec_decode_num_drafts > 0 and stats.spec_decode_num_accepted_tokens > 0
    assert stats.spec_decode_num_accepted_tokens <= stats.spec_decode_num_draft_tokens
    assert stats.generation_tokens == sum(map(len, expected))


def test_draft_model_greedy_equals_plain_decoding(make_engine, llama_dir, greedy, run, collect_tokens):
    expected = generate(make_engine(), greedy(24), run, collect_tokens)
    same = SpeculativeConfig(method="draft_model", model=str(llama_dir), num_speculative_tokens=4)
    engine = make_engine(speculative_config=same)
    assert generate(engine, greedy(24), run, collect_tokens) == expected
    stats = engine.stats()
    assert stats.spec_decode_num_accepted_tokens / stats.spec_decode_num_draft_tokens > 0.9  # self-draft
    assert engine.speculative.proposer.block_manager.num_free_blocks == engine.block_manager.num_blocks

    truncated = SpeculativeConfig(method="draft", model=str(llama_dir), draft_num_layers=1)
    engine = make_engine(speculative_config=truncated)
    assert generate(engine, greedy(24), run, collect_tokens) == expected
    assert engine.stats().spec_decode_num_drafts > 0


def test_stop_rules_inside_accepted_drafts(make_engine, greedy, run, collect_tokens):
    plain = make_engine()
    expected = generate(plain, greedy(24), run, collect_tokens)
    # stop on a token the speculative run would get in the middle of an accepted draft, or at max_tokens
    stop_token = expected[2][10]
    for params in (greedy(7), greedy(24, stop_token_ids=[stop_token])):
        want = generate(make_engine(), params, run, collect_tokens)
        got = generate(make_engine(speculative_config=NGRAM), params, run, collect_tokens)
        assert got == want


def test_sampled_requests_decode_normally_beside_speculating_ones(make_engine, greedy, run, collect_tokens):
    engine = make_engine(speculative_config=NGRAM)
    sampled = SamplingParams(temperature=0.8, seed=5, max_tokens=24, ignore_eos=True)
    engine.add_request("sampled", prompts()[0], sampled)
    expected = generate(make_engine(), greedy(24), run, collect_tokens)
    assert generate(engine, greedy(24), run, collect_tokens) == expected  # drained "sampled" too
    assert engine.stats().generation_tokens == sum(map(len, expected)) + 24


def test_disable_by_batch_size_speculates_only_in_small_batches(make_engine, greedy, run, collect_tokens):
    expected = generate(make_engine(), greedy(24), run, collect_tokens)
    spec = SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_max=3, disable_by_batch_size=1)
    engine = make_engine(speculative_config=spec)
    assert generate(engine, greedy(24), run, collect_tokens) == expected  # 7 at once: no drafts
    assert engine.stats().spec_decode_num_drafts == 0
    engine.add_request("alone", prompts()[0], greedy(24))
    assert collect_tokens(run(engine)["alone"]) == expected[0]
    assert engine.stats().spec_decode_num_drafts > 0
