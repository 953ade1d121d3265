"""`SamplingParams.prompt_logprobs`: the prompt tokens' logprobs equal transformers' log-softmaxed logits,
however the prefill is chunked, batched or preceded by a cached prefix."""

from __future__ import annotations

import random

import pytest
import torch

from nereid.backends.llm import SamplingParams

TOP = 3


@pytest.fixture(scope="module")
def reference(llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()

    def logprobs(prompt: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([prompt])).logits[0].float().log_softmax(-1)

    return logprobs


def prompts(lengths: list[int]) -> list[list[int]]:
    rng = random.Random(3)
    return [[rng.randrange(3, 300) for _ in range(n)] for n in lengths]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "max_num_batched_tokens": 7,
            "max_num_seqs": 4,
        },  # chunked prefill: each chunk fills its own positions
        {"enable_prefix_caching": True},
    ],
    ids=["whole", "chunked", "prefix-cache"],
)
def test_prompt_logprobs_match_transformers(make_engine, run, reference, overrides):
    engine = make_engine(**overrides)
    batch = prompts([1, 5, 13, 21])
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=TOP, ignore_eos=True)
    engine.add_request("warm", batch[3], SamplingParams(max_tokens=1))  # fills the prefix cache when on
    run(engine)
    for i, prompt in enumerate(batch):
        engine.add_request(str(i), prompt, params)
    outputs = run(engine)
    for i, prompt in enumerate(batch):
        first = outputs[str(i)][0]
        assert all(o.prompt_logprobs is None for o in outputs[str(i)][1:])
        entries = first.prompt_logprobs
        assert entries is not None and [e.token_id for e in entries] == prompt
        assert entries[0].top_token_ids == []  # nothing predicts the first token
        expected = reference(prompt)
        for pos in range(1, len(prompt)):
            row = expected[pos - 1]
            assert entries[pos].logprob == pytest.approx(float(row[prompt[pos]]), abs=1e-4)
            top = row.topk(TOP)
            assert entries[pos].top_token_ids == top.indices.tolist()
            assert entries[pos].top_logprobs == pytest.approx(top.values.tolist(), abs=1e-4)
    assert engine.stats().prefix_cache_hits == 0  # prompt-logprob requests skip the cache


def test_prompt_logprobs_limit(make_engine):
    engine = make_engine(max_logprobs=2)
    with pytest.raises(ValueError, match="prompt_logprobs=3 exceeds"):
        engine.add_request("x", [5, 6], SamplingParams(prompt_logprobs=3))
