from __future__ import annotations

import math

import torch

from nereid.backends.llm.sampler import Sampler, apply_min_p, apply_penalties, apply_top_k_top_p
from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.sequence import Sequence

NEG = float("-inf")


def make_seq(
    prompt: list[int], output: list[int] = (), seed: int | None = None, **params: object
) -> Sequence:
    p = SamplingParams(seed=seed, **params)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    s = Sequence("r", prompt, p, max_tokens=100, generator=gen)
    for t in output:
        s.append_token(t)
    return s


def test_top_k_and_top_p_masks():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    out = apply_top_k_top_p(logits.clone(), torch.tensor([2, -1]), torch.tensor([1.0, 1.0]))
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    assert torch.isfinite(out[1]).all()
    out = apply_top_k_top_p(logits.clone(), torch.tensor([-1, -1]), torch.tensor([0.5, 0.65]))
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()  # 0.4 + 0.3 reaches 0.5
    assert torch.isfinite(out[1, 2:]).all() and torch.isinf(out[1, :2]).all()  # 0.4 + 0.3 reaches 0.65
    out = apply_top_k_top_p(logits.clone(), torch.tensor([-1, -1]), torch.tensor([0.01, 0.01]))
    assert torch.isfinite(out).sum() == 2  # always keeps the most likely token


def test_min_p_mask():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    out = apply_min_p(logits, torch.tensor([0.2]))  # threshold 0.1
    assert torch.isfinite(out[0, :3]).all() and out[0, 3] == NEG


def test_penalties_follow_vllm_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0, 3.0]])
    seqs = [make_seq([0], [1], repetition_penalty=2.0)]  # 0 seen in the prompt, 1 in the output
    assert apply_penalties(logits.clone(), seqs).tolist() == [[1.0, -4.0, 1.0, 1.0, 3.0]]
    seqs = [make_seq([4, 4], [2, 2, 3], frequency_penalty=0.5, presence_penalty=0.25)]
    out = apply_penalties(logits.clone(), seqs)  # prompt tokens are not penalised by these two
    assert out.tolist() == [[2.0, -2.0, 1.0 - 1.0 - 0.25, 1.0 - 0.5 - 0.25, 3.0]]


def test_greedy_min_tokens_and_logprobs():
    sampler = Sampler(torch.device("cpu"))
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 1.0, 2.0]])
    seqs = [make_seq([0], temperature=0.0, logprobs=2), make_seq([0], temperature=0.0, min_tokens=1)]
    (t0, lp0), (t1, lp1) = sampler(logits, seqs, eos_token_ids=[0])
    assert (t0, t1) == (1, 2)  # row 1: eos (0) is masked until min_tokens
    assert lp1 is None and lp0 is not None
    expected = logits[0].log_softmax(-1)
    assert lp0.token_id == 1 and math.isclose(lp0.logprob, float(expected[1]), rel_tol=1e-6)
    assert lp0.top_token_ids == [1, 2] and math.isclose(lp0.top_logprobs[1], float(expected[2]), rel_tol=1e-6)


def test_seeded_sampling_is_reproducible_and_batch_independent():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))

    def draws(seed: int, companions: int) -> list[int]:
        sampler = Sampler(torch.device("cpu"), seed=123)
        seq = make_seq([1], seed=seed, temperature=1.0)
        others = [make_seq([1], temperature=1.0) for _ in range(companions)]
        out = []
        for _ in range(20):
            rows = sampler(logits.repeat(1 + companions, 1), [seq, *others], [])
            out.append(rows[0][0])
        return out

    assert draws(7, 0) == draws(7, 3)
    assert draws(7, 0) != draws(8, 0)


def test_sampling_frequencies_follow_probabilities():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    n = 4000
    logits = torch.log(probs).repeat(n, 1)
    sampler = Sampler(torch.device("cpu"), seed=0)
    seqs = [make_seq([1], temperature=1.0)] * n
    counts = torch.bincount(torch.tensor([t for t, _ in sampler(logits, seqs, [])]), minlength=4)
    assert counts[3] == 0
    assert torch.allclose(counts.float() / n, probs, atol=0.03)
    seqs = [make_seq([1], temperature=1.0, top_k=1)] * 50
    assert {t for t, _ in sampler(logits[:50], seqs, [])} == {0}
