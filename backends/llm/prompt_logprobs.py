"""Prompt logprobs (`SamplingParams.prompt_logprobs`, OpenAI's ``echo`` with ``logprobs``) from prefill logits.

Row j of a prefill chunk that starts at position s holds the hidden state of token s + j, whose logits
predict token s + j + 1; each chunk therefore fills the prompt positions s + 1 .. s + n (at most the last
prompt token). A sequence records each position once (`Sequence.prompt_logprobs` grows in order), so a
preempted sequence's recomputation adds nothing.
"""

from __future__ import annotations

import torch

from nereid.backends.llm.attention import AttentionMetadata
from nereid.backends.llm.models.llama import LlamaForCausalLM
from nereid.backends.llm.sequence import SampleLogprobs, Sequence


def record(
    model: LlamaForCausalLM, batch: list[tuple[Sequence, int]], hidden: torch.Tensor, meta: AttentionMetadata
) -> None:
    """Append to each prefilling sequence that asked for them the logprobs of the prompt tokens this step's
    chunk predicts."""
    for i, (seq, n) in enumerate(batch):
        k = seq.params.prompt_logprobs
        start = seq.num_computed_tokens
        if k is None or start >= seq.num_prompt_tokens:
            continue
        first = len(seq.prompt_logprobs)  # the next position to fill (position 0 is filled at creation)
        last = min(start + n, seq.num_prompt_tokens - 1)
        if first > last or first - 1 < start:
            continue
        base = meta.query_start_loc[i] - start
        logprobs = model.compute_logits(hidden[base + first - 1 : base + last]).log_softmax(-1)
        targets = torch.tensor(seq.token_ids[first : last + 1], device=logprobs.device)
        own = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        top = logprobs.topk(k) if k else None
        for row, token in enumerate(seq.token_ids[first : last + 1]):
            seq.prompt_logprobs.append(
                SampleLogprobs(
                    token_id=token,
                    logprob=own[row],
                    top_token_ids=top.indices[row].tolist() if top is not None else [],
                    top_logprobs=top.values[row].tolist() if top is not None else [],
                )
            )
