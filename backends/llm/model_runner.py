"""`ModelRunner`: turns a scheduled batch into tensors + AttentionMetadata, runs the model, samples."""

from __future__ import annotations

import torch

from nereid.backends.llm import native, prompt_logprobs
from nereid.backends.llm.attention import AttentionMetadata, decode_groups
from nereid.backends.llm.compiled_decode import CompiledDecode
from nereid.backends.llm.config import CheckpointConfig, EngineConfig
from nereid.backends.llm.kv_cache import allocate_kv_cache
from nereid.backends.llm.models.llama import LlamaForCausalLM
from nereid.backends.llm.sampler import Sampler
from nereid.backends.llm.sequence import SampleLogprobs, Sequence

Sample = tuple[int, SampleLogprobs | None]


def native_kernels(config: EngineConfig) -> bool:
    """Whether the forward pass uses the C++ kernels (`EngineConfig.kernels`); raises ValueError when
    `native` was asked for and they cannot be built."""
    if config.kernels == "torch" or torch.device(config.device).type != "cpu":
        return False
    if native.load():
        return True
    if config.kernels == "native":
        raise ValueError(
            "kernels native: the C++ kernels could not be built (see the log); use auto or torch"
        )
    return False


class ModelRunner:
    """Owns the model, the KV cache tensor and the sampler; `execute` is called once per engine step."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        checkpoint_config: CheckpointConfig,
        config: EngineConfig,
        num_blocks: int,
    ) -> None:
        self.model = model
        self.checkpoint_config = checkpoint_config
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        self.kv_cache = allocate_kv_cache(
            checkpoint_config, num_blocks, config.block_size, config.torch_dtype(), self.device
        )
        self.sampler = Sampler(self.device, config.seed)
        self.native_decode = native_kernels(config)
        self.compiled_decode: CompiledDecode | None = None
        if config.compile:
            self.compiled_decode = CompiledDecode(model)
            self.compiled_decode.warm_up(self.kv_cache, config.block_size, self.native_decode)
        # Fused elementwise kernels in the eager forward (a compiled graph fuses its own).
        model.fused = self.native_decode and self.compiled_decode is None

    def prepare(
        self, batch: list[tuple[Sequence, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Flatten `batch` (single-token sequences first, by context length) into ids, positions and metadata."""
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts, ctx_lens = [0], []
        for seq, n in batch:
            start = seq.num_computed_tokens
            ids += seq.token_ids[start : start + n]
            positions += range(start, start + n)
            slots += [seq.block_table[p // bs] * bs + p % bs for p in range(start, start + n)]
            starts.append(starts[-1] + n)
            ctx_lens.append(start + n)
        width = max(len(seq.block_table) for seq, _ in batch)
        tables = [seq.block_table + [0] * (width - len(seq.block_table)) for seq, _ in batch]
        num_decodes = next((i for i, (_, n) in enumerate(batch) if n != 1), len(batch))
        dev, long = self.device, torch.long
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=long, device=dev),
            block_tables=torch.tensor(tables, dtype=long, device=dev),
            context_lens=torch.tensor(ctx_lens, dtype=long, device=dev),
            query_start_loc=starts,
            context_lens_cpu=ctx_lens,
            num_decodes=num_decodes,
            block_size=bs,
            decode_groups=[] if self.native_decode else decode_groups(ctx_lens[:num_decodes]),
            native_decode=self.native_decode,
        )
        return (
            torch.tensor(ids, dtype=long, device=dev),
            torch.tensor(positions, dtype=long, device=dev),
            meta,
        )

    @torch.inference_mode()
    def forward(
        self, scheduled: list[tuple[Sequence, int]]
    ) -> tuple[list[tuple[Sequence, int]], torch.Tensor, AttentionMetadata]:
        """Compute the scheduled tokens' K/V. Returns the batch in run order, its final hidden states and
        metadata (sequence i's rows are `meta.query_start_loc[i]:meta.query_start_loc[i + 1]`)."""
        # Decodes first, shortest context first (for `decode_groups`); then the prefill chunks.
        batch = sorted(scheduled, key=lambda item: (item[1] != 1, item[0].num_computed_tokens))
        input_ids, positions, meta = self.prepare(batch)
        if self.compiled_decode is not None and meta.num_decodes == meta.num_seqs:
            hidden = self.compiled_decode(input_ids, positions, self.kv_cache, meta)
        else:
            hidden = self.model(input_ids, positions, self.kv_cache, meta)
        prompt_logprobs.record(self.model, batch, hidden, meta)
        return batch, hidden, meta

    @torch.inference_mode()
    def sample(self, hidden: torch.Tensor, rows: list[int], seqs: list[Sequence]) -> list[Sample]:
        """Sample one token from each of `hidden`'s `rows`, row j for `seqs[j]`."""
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
        return self.sampler(logits, seqs, self.checkpoint_config.eos_token_ids)

    def execute(self, scheduled: list[tuple[Sequence, int]]) -> dict[int, Sample]:
        """Compute the scheduled tokens' K/V; sample for every sequence whose tokens are now all computed.

        Returns `{seq_id: (token_id, logprobs)}`; sequences in the middle of a chunked prefill get nothing.
        """
        batch, hidden, meta = self.forward(scheduled)
        done = [i for i, (seq, n) in enumerate(batch) if seq.num_computed_tokens + n == seq.num_tokens]
        if not done:
            return {}
        seqs = [batch[i][0] for i in done]
        samples = self.sample(hidden, [meta.query_start_loc[i + 1] - 1 for i in done], seqs)
        return {seq.seq_id: sample for seq, sample in zip(seqs, samples, strict=True)}
