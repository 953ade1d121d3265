"""`DraftModelProposer`: a small second LLM proposes drafts, greedily, with its own paged KV cache.

Each target sequence has a *shadow* sequence on the draft's own block manager. Before proposing, the shadow
is synced with the target: tokens past their common prefix (rejected drafts) are dropped and their KV is no
longer counted as computed, then the target's new tokens are appended. One draft forward computes every
shadow's catch-up chunk and samples its first draft; k - 1 single-token decode steps follow, batched over
all speculating sequences. The draft must share the target's tokenizer (same vocabulary size is checked).
"""

from __future__ import annotations

import dataclasses

from nereid.backends.llm import loader
from nereid.backends.llm.block_manager import BlockManager
from nereid.backends.llm.config import CheckpointConfig, EngineConfig, SpeculativeConfig
from nereid.backends.llm.model_runner import ModelRunner
from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.sequence import Sequence

_GREEDY = SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True)


class DraftModelProposer:
    def __init__(
        self, spec: SpeculativeConfig, config: EngineConfig, target: CheckpointConfig, num_blocks: int
    ) -> None:
        draft_config = dataclasses.replace(
            config,
            model=spec.model or "",
            tokenizer=None,
            num_kv_blocks=num_blocks,
            enable_prefix_caching=False,
            speculative_config=None,
        )
        loaded = loader.load(draft_config)
        model, cfg = loaded.model, loaded.config
        if cfg.vocab_size != target.vocab_size:
            raise ValueError(
                f"the draft model's vocabulary ({cfg.vocab_size} tokens) differs from the target's "
                f"({target.vocab_size}); a draft must share the target's tokenizer"
            )
        if spec.draft_num_layers is not None and spec.draft_num_layers < cfg.num_hidden_layers:
            model.model.layers = model.model.layers[: spec.draft_num_layers]
            cfg.num_hidden_layers = spec.draft_num_layers
        self.block_manager = BlockManager(num_blocks, config.block_size, enable_prefix_caching=False)
        self.runner = ModelRunner(model, cfg, draft_config, num_blocks)
        self._shadows: dict[int, Sequence] = {}
        self._synced: dict[int, int] = {}
        """Target length at the last sync: the tokens before it are known to match the shadow's."""

    def propose(self, requests: list[tuple[Sequence, int]]) -> dict[int, list[int]]:
        bm, active, wants = self.block_manager, [], {}
        for seq, k in requests:
            shadow = self._sync(seq)
            need = shadow.num_tokens - shadow.num_computed_tokens + k - 1  # catch-up chunk + k - 1 decodes
            if not bm.can_append_slots(shadow, need):
                self.release(seq)  # the draft's cache is full: this sequence decodes without drafts
                continue
            bm.append_slots(shadow, need)
            active.append((shadow, shadow.num_tokens - shadow.num_computed_tokens))
            wants[shadow.seq_id] = (seq.seq_id, k)
        drafts: dict[int, list[int]] = {seq_id: [] for seq_id, _ in wants.values()}
        while active:
            samples = self.runner.execute(active)
            next_active = []
            for shadow, n in active:
                shadow.num_computed_tokens += n
                token = samples[shadow.seq_id][0]
                shadow.append_token(token)
                seq_id, k = wants[shadow.seq_id]
                drafts[seq_id].append(token)
                if len(drafts[seq_id]) < k:
                    next_active.append((shadow, 1))
            active = next_active
        return drafts

    def _sync(self, seq: Sequence) -> Sequence:
        target = seq.token_ids
        shadow = self._shadows.get(seq.seq_id)
        if shadow is None:
            shadow = Sequence(seq.request_id, target, _GREEDY, max_tokens=1 << 30)
            self._shadows[seq.seq_id] = shadow
        else:
            tokens = shadow.token_ids
            common = self._synced[seq.seq_id]
            limit = min(len(tokens), len(target))
            while common < limit and tokens[common] == target[common]:
                common += 1
            shadow.num_computed_tokens = min(shadow.num_computed_tokens, common)
            tokens[common:] = target[common:]
            self.block_manager.truncate(shadow, shadow.num_computed_tokens)
        self._synced[seq.seq_id] = len(target)
        return shadow

    def release(self, seq: Sequence) -> None:
        shadow = self._shadows.pop(seq.seq_id, None)
        self._synced.pop(seq.seq_id, None)
        if shadow is not None:
            self.block_manager.free(shadow)
