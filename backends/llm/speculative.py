"""Speculative decoding: propose k draft tokens, verify them with one target forward, keep the agreeing prefix.

Per step, every scheduled sequence that is decoding (one uncomputed token) and `speculates` asks the proposer
for up to k drafts: prompt lookup (`NgramProposer`: the tokens that followed the latest earlier occurrence of
the sequence's last n tokens) or a small draft model (`DraftModelProposer`). The target then computes the
last accepted token plus the drafts as one multi-token chunk against the paged KV cache (the chunked-prefill
attention path), in the same batch as the other sequences' decodes and prefill chunks. With the target's
greedy picks t_0..t_k at those k + 1 positions, the longest prefix where d_i == t_i is accepted and the
target's own next token (the bonus t_a) is appended, so a step yields 1..k+1 tokens. Rejected drafts' KV
slots are simply never counted as computed (they are overwritten later) and blocks past the accepted
tokens are released at once.

Greedy output is the non-speculative output token for token: each kept token is the target's argmax given
exactly the tokens before it. Requests with temperature > 0, penalties (they depend on the tokens sampled
before each position), logprobs or an unmet `min_tokens` do not speculate; they decode one token per step in
the same batch. (Rejection sampling would let sampled requests speculate too; not implemented.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nereid.backends.llm.block_manager import BlockManager
from nereid.backends.llm.config import CheckpointConfig, EngineConfig, SpeculativeConfig
from nereid.backends.llm.model_runner import ModelRunner, Sample
from nereid.backends.llm.sequence import Sequence


class Proposer(Protocol):
    def propose(self, requests: list[tuple[Sequence, int]]) -> dict[int, list[int]]:
        """Up to k draft tokens per `(sequence, k)`, by seq_id; sequences without a proposal are left out."""

    def release(self, seq: Sequence) -> None:
        """Forget a finished sequence (free whatever the proposer holds for it)."""


def speculates(seq: Sequence) -> bool:
    """Whether the sequence's next token may come from verified drafts (greedy, nothing position-dependent).

    A grammar-guided sequence does not: its matcher masks one position per step and cannot check drafts.
    """
    p = seq.params
    return (
        p.greedy
        and not p.has_penalties
        and p.logprobs is None
        and seq.grammar is None
        and seq.num_output_tokens >= p.min_tokens
    )


def ngram_propose(tokens: list[int], k: int, n_min: int, n_max: int) -> list[int]:
    """Prompt lookup: for n from `n_max` down to `n_min`, find the latest earlier occurrence of the last n
    tokens and return (up to k of) the tokens that followed it; [] when no suffix n-gram recurs."""
    size = len(tokens)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        suffix = tokens[size - n :]
        first = suffix[0]
        for start in range(size - n - 1, -1, -1):  # latest occurrence first: the most recent context
            if tokens[start] == first and tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


class NgramProposer:
    """Drafts from the request's own prompt and output; no second model."""

    def __init__(self, spec: SpeculativeConfig) -> None:
        self.spec = spec

    def propose(self, requests: list[tuple[Sequence, int]]) -> dict[int, list[int]]:
        lo, hi = self.spec.prompt_lookup_min, self.spec.prompt_lookup_max
        out = {}
        for seq, k in requests:
            drafts = ngram_propose(seq.token_ids, k, lo, hi)
            if drafts:
                out[seq.seq_id] = drafts
        return out

    def release(self, seq: Sequence) -> None:
        pass


@dataclass
class SpecDecodeStats:
    """Counters with vLLM's meanings (``vllm:spec_decode_num_*``)."""

    num_drafts: int = 0
    """Verifications of a non-empty draft."""
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0


class SpeculativeDecoder:
    """Runs the engine's batch with drafts: `execute` replaces `ModelRunner.execute` for the step."""

    def __init__(
        self,
        config: EngineConfig,
        runner: ModelRunner,
        block_manager: BlockManager,
        checkpoint: CheckpointConfig,
        max_model_len: int,
    ) -> None:
        spec = config.speculative_config
        if spec is None:
            raise ValueError("speculative decoding is not configured")
        self.spec, self.runner, self.block_manager = spec, runner, block_manager
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.stats = SpecDecodeStats()
        self.proposer: Proposer
        if spec.method == "ngram":
            self.proposer = NgramProposer(spec)
        else:
            from nereid.backends.llm.draft_model import DraftModelProposer

            self.proposer = DraftModelProposer(spec, config, checkpoint, block_manager.num_blocks)

    def execute(self, scheduled: list[tuple[Sequence, int]]) -> dict[int, list[Sample]]:
        """Like `ModelRunner.execute`, but a speculating sequence may get several tokens: `{seq_id: samples}`.

        All but the last returned token of a sequence are verified drafts whose KV is already in the cache
        (the caller counts them as computed as it appends them); the last one is uncomputed as usual.
        """
        spare = self.max_num_batched_tokens - sum(n for _, n in scheduled)
        drafts = self._propose(scheduled, spare)
        bm, batch_in = self.block_manager, []
        for seq, n in scheduled:
            d = drafts.get(seq.seq_id)
            if d and len(d) <= spare and bm.can_append_slots(seq, 1 + len(d)):
                bm.append_slots(seq, 1 + len(d))
                seq.token_ids += d  # temporarily: `prepare` reads the chunk's ids from the sequence
                spare -= len(d)
                batch_in.append((seq, 1 + len(d)))
            else:
                drafts.pop(seq.seq_id, None)
                batch_in.append((seq, n))
        try:
            batch, hidden, meta = self.runner.forward(batch_in)
        finally:
            for seq, _ in batch_in:
                if seq.seq_id in drafts:
                    del seq.token_ids[-len(drafts[seq.seq_id]) :]
        rows: list[int] = []
        seqs: list[Sequence] = []
        for i, (seq, n) in enumerate(batch):
            end = meta.query_start_loc[i + 1]
            m = len(drafts[seq.seq_id]) + 1 if seq.seq_id in drafts else 1
            if m > 1 or seq.num_computed_tokens + n == seq.num_tokens:
                rows += range(end - m, end)
                seqs += [seq] * m
        if not rows:
            return {}
        samples = self.runner.sample(hidden, rows, seqs)
        out: dict[int, list[Sample]] = {}
        at = 0
        while at < len(seqs):
            seq = seqs[at]
            d = drafts.get(seq.seq_id, [])
            picks = samples[at : at + len(d) + 1]
            at += len(d) + 1
            accepted = next((i for i, t in enumerate(d) if picks[i][0] != t), len(d))
            out[seq.seq_id] = picks[: accepted + 1]
            if d:
                self.stats.num_drafts += 1
                self.stats.num_draft_tokens += len(d)
                self.stats.num_accepted_tokens += accepted
                bm.truncate(seq, seq.num_tokens + accepted + 1)  # release rejected drafts' blocks
        return out

    def _propose(self, scheduled: list[tuple[Sequence, int]], spare: int) -> dict[int, list[int]]:
        k_max, wanted = self.spec.num_speculative_tokens, []
        limit = self.spec.disable_by_batch_size
        if limit is not None and len(scheduled) > limit:
            return {}
        for seq, n in scheduled:
            if n != 1 or seq.num_computed_tokens + 1 != seq.num_tokens or not speculates(seq):
                continue
            room = min(seq.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
            k = min(k_max, room, spare)
            if k > 0:
                wanted.append((seq, k))
        return self.proposer.propose(wanted) if wanted else {}

    def release(self, seq: Sequence) -> None:
        self.proposer.release(seq)
