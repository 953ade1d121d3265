"""Batched sampling: penalties → logit bias → min_tokens mask → grammar mask → greedy, or temperature → min_p →
top_k → top_p → draw; then each guided sequence's grammar takes its token."""

from __future__ import annotations

import torch

from nereid.backends.llm import grammar
from nereid.backends.llm.sequence import SampleLogprobs, Sequence


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """vLLM semantics, in place on the rows of sequences with penalties: repetition over prompt + output,
    frequency and presence over output only."""
    vocab = logits.shape[-1]
    for row, seq in enumerate(seqs):
        p = seq.params
        if not p.has_penalties:
            continue
        out_ids = torch.tensor(seq.output_token_ids, dtype=torch.long, device=logits.device)
        counts = torch.bincount(out_ids, minlength=vocab)[:vocab].to(logits.dtype)
        if p.repetition_penalty != 1.0:
            prompt_ids = torch.tensor(seq.prompt_token_ids, dtype=torch.long, device=logits.device)
            seen = counts > 0
            seen[prompt_ids[prompt_ids < vocab]] = True
            x = logits[row]
            logits[row] = torch.where(
                seen, torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty), x
            )
        logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < min_p[:, None] * probs.amax(-1, keepdim=True), float("-inf"))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the k most likely tokens (k <= 0: all), then the smallest set whose probability reaches top_p."""
    vocab = logits.shape[-1]
    ordered, order = logits.sort(-1, descending=True)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    drop = torch.arange(vocab, device=logits.device)[None, :] >= k[:, None]
    probs = ordered.masked_fill(drop, float("-inf")).softmax(-1)
    drop |= (probs.cumsum(-1) - probs) > top_p[:, None]
    return logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))


class Sampler:
    """Picks one token per row of `logits` ([num_seqs, vocab], float32) for the matching sequences.

    Rows with temperature ~0 are greedy. Others draw with `seq.generator` when the request has a seed
    (reproducible), else with the sampler's own generator.
    """

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: list[int]
    ) -> list[tuple[int, SampleLogprobs | None]]:
        want_logprobs = any(s.params.logprobs is not None for s in seqs)
        raw = logits.log_softmax(-1) if want_logprobs else None
        logits = apply_penalties(logits.clone(), seqs)
        for row, seq in enumerate(seqs):
            if seq.params.logit_bias:
                bias = seq.params.logit_bias
                ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
                logits[row, ids] += torch.tensor(
                    list(bias.values()), dtype=logits.dtype, device=logits.device
                )
            # a guided row's grammar decides where it may end (banning EOS could leave no allowed token)
            if seq.num_output_tokens < seq.params.min_tokens and seq.grammar is None:
                banned = seq.params.stop_token_ids + ([] if seq.params.ignore_eos else eos_token_ids)
                logits[row, banned] = float("-inf")
        grammar.apply_masks(logits, seqs)
        tokens = logits.argmax(-1)
        rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if rows:
            tokens[rows] = self._draw(logits[rows], [seqs[i] for i in rows])
        token_ids = tokens.tolist()
        grammar.advance(seqs, token_ids)
        return [
            (t, self._logprobs(raw, i, t, s) if raw is not None else None)
            for i, (t, s) in enumerate(zip(token_ids, seqs, strict=True))
        ]

    def _draw(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        dev = logits.device
        temp = torch.tensor([s.params.temperature for s in seqs], device=dev)
        logits = logits / temp[:, None]
        if any(s.params.min_p > 0 for s in seqs):
            logits = apply_min_p(logits, torch.tensor([s.params.min_p for s in seqs], device=dev))
        if any(s.params.top_k > 0 or s.params.top_p < 1 for s in seqs):
            top_k = torch.tensor([s.params.top_k for s in seqs], device=dev)
            logits = apply_top_k_top_p(
                logits, top_k, torch.tensor([s.params.top_p for s in seqs], device=dev)
            )
        probs = logits.softmax(-1)
        noise = torch.empty_like(probs)
        for row, seq in enumerate(seqs):  # probs / Exponential(1) noise: argmax is a categorical draw
            noise[row].exponential_(generator=seq.generator or self.generator)
        return (probs / noise).argmax(-1)

    @staticmethod
    def _logprobs(raw: torch.Tensor, row: int, token: int, seq: Sequence) -> SampleLogprobs | None:
        n = seq.params.logprobs
        if n is None:
            return None
        top = raw[row].topk(n) if n else None
        return SampleLogprobs(
            token_id=token,
            logprob=float(raw[row, token]),
            top_token_ids=top.indices.tolist() if top is not None else [],
            top_logprobs=top.values.tolist() if top is not None else [],
        )
