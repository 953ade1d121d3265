"""`LLMEngine`: single-owner, synchronous `add_request / step / abort` over the scheduler and model runner."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence as Seq

import torch

from nereid.backends.llm import kv_cache, loader
from nereid.backends.llm.block_manager import BlockManager
from nereid.backends.llm.config import EngineConfig
from nereid.backends.llm.detokenizer import IncrementalDetokenizer
from nereid.backends.llm.grammar import Grammars
from nereid.backends.llm.model_runner import ModelRunner, Sample
from nereid.backends.llm.outputs import EngineStats, RequestOutput
from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.scheduler import Scheduler
from nereid.backends.llm.sequence import FinishReason, SampleLogprobs, Sequence
from nereid.backends.llm.speculative import SpecDecodeStats, SpeculativeDecoder


class LLMEngine:
    """Serves one model. Not thread-safe: one task or thread owns it and calls `step()` in a loop.

    Call order: `add_request` any time; `step()` runs one batch and returns a `RequestOutput` per request
    that produced tokens (or finished) in it; `abort` frees a request's blocks at once and its final
    output (finish_reason "abort") comes with the next `step()`.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)  # before loading: prepacking already runs kernels
        loaded = loader.load(config)
        self.checkpoint_config, self.tokenizer = loaded.config, loaded.tokenizer
        self.max_model_len = config.resolve_max_model_len(loaded.config.max_position_embeddings)
        num_blocks = kv_cache.num_kv_blocks(config, loaded.config, config.torch_dtype())
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.model_runner = ModelRunner(loaded.model, loaded.config, config, num_blocks)
        self.speculative: SpeculativeDecoder | None = None
        if config.speculative_config is not None:
            self.speculative = SpeculativeDecoder(
                config, self.model_runner, self.block_manager, loaded.config, self.max_model_len
            )
        self._seqs: dict[str, Sequence] = {}
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._pending: list[RequestOutput] = []
        self._prompt_tokens = self._generation_tokens = 0
        self._finished: Counter[str] = Counter()
        self._grammars: Grammars | None = None  # built with the first guided request

    def add_request(
        self, request_id: str, prompt: str | Seq[int], params: SamplingParams | None = None, priority: int = 0
    ) -> None:
        """Queue a request. `prompt` is token ids, or text encoded with the tokenizer's own special tokens
        (pass ids for a chat prompt whose template already adds BOS). Lower `priority` values run first.

        Raises ValueError (and changes nothing) on a duplicate id, a prompt that is empty, out of vocabulary or
        too long, `max_tokens` beyond the context length, or values above the engine's limits.
        """
        params = params or SamplingParams()
        if request_id in self._seqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        self._check_limits(params)
        ids = self._prompt_ids(prompt)
        limit = self.max_model_len
        max_tokens = limit - len(ids) if params.max_tokens is None else params.max_tokens
        if len(ids) + max_tokens > limit:
            raise ValueError(
                f"the context length is {limit} tokens, but {len(ids) + max_tokens} were requested "
                f"({len(ids)} in the prompt, {max_tokens} for the output)"
            )
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.model_runner.device).manual_seed(params.seed)
        seq = Sequence(request_id, ids, params, max_tokens, priority, generator)
        if params.guided_decoding is not None:
            seq.grammar = self._grammar_compiler().matcher(params.guided_decoding)
        self._seqs[request_id] = seq
        self._detok[request_id] = IncrementalDetokenizer(self.tokenizer, ids, params)
        self.scheduler.add(seq)

    def _check_limits(self, params: SamplingParams) -> None:
        if params.n > self.config.max_n:
            raise ValueError(f"n={params.n} exceeds the limit of {self.config.max_n}")
        if params.n > 1:
            raise ValueError("n > 1 is not supported yet; send n separate requests")
        for key in ("logprobs", "prompt_logprobs"):
            value = getattr(params, key)
            if value is not None and value > self.config.max_logprobs:
                raise ValueError(f"{key}={value} exceeds the limit of {self.config.max_logprobs}")
        vocab = self.checkpoint_config.vocab_size
        unknown = sorted(t for t in (*params.logit_bias, *params.stop_token_ids) if t >= vocab)
        if unknown:
            raise ValueError(f"token id {unknown[0]} is out of the vocabulary (ids are 0..{vocab - 1})")

    def _grammar_compiler(self) -> Grammars:
        if self._grammars is None:
            self._grammars = Grammars(
                self.tokenizer,
                self.checkpoint_config.vocab_size,
                self.config.max_grammar_bytes,
                self.config.max_schema_depth,
            )
        return self._grammars

    def _prompt_ids(self, prompt: str | Seq[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        vocab = self.checkpoint_config.vocab_size
        if not ids:
            raise ValueError("the prompt is empty")
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be ints in [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens; the context length is {self.max_model_len} tokens, "
                "which leaves no room for output"
            )
        return ids

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks now. Returns False if it is unknown or already finished."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return False
        self._finish(seq, FinishReason.ABORT)
        self._pending.append(self._output(seq, [], [], ""))
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, apply stop rules. Returns this step's outputs."""
        outputs, self._pending = self._pending, []
        scheduled = self.scheduler.schedule().scheduled
        if not scheduled:
            return outputs
        if self.speculative is not None:
            samples = self.speculative.execute(scheduled)
        else:
            samples = {k: [v] for k, v in self.model_runner.execute(scheduled).items()}
        for seq, n in scheduled:
            seq.num_computed_tokens += n
            new = samples.get(seq.seq_id, [])
            new, reason = self._append(seq, new)
            self.block_manager.cache_full_blocks(seq)
            if not new:
                continue
            if reason is not None:
                self._finish(seq, reason)
            text = self._detok[seq.request_id].pop_delta(finished=reason is not None)
            tokens, logprobs = [t for t, _ in new], [lp for _, lp in new if lp]
            outputs.append(self._output(seq, tokens, logprobs, text))
            if reason is not None:
                del self._detok[seq.request_id]
        return outputs

    def _append(self, seq: Sequence, new: list[Sample]) -> tuple[list[Sample], FinishReason | None]:
        """Append a step's tokens (one, or verified drafts plus one) until a stop rule fires.
        Returns the tokens taken and the finish reason, if any."""
        if new and seq.num_output_tokens == 0:
            self._prompt_tokens += seq.num_prompt_tokens
        for i, (token, logprobs) in enumerate(new):
            if i:  # the previous token was a verified draft: its KV is already in the cache
                seq.num_computed_tokens += 1
            seq.append_token(token, logprobs)
            self._generation_tokens += 1
            reason = self._check_stop(seq, token)
            if reason is not None:
                return new[: i + 1], reason
        return new, None

    def _check_stop(self, seq: Sequence, token: int) -> FinishReason | None:
        p, detok = seq.params, self._detok[seq.request_id]
        may_stop = seq.num_output_tokens >= p.min_tokens
        if may_stop and not p.ignore_eos and token in self.checkpoint_config.eos_token_ids:
            return FinishReason.STOP  # the eos token adds no text
        if seq.grammar is not None and seq.grammar.is_terminated():  # it took end-of-sequence
            return FinishReason.STOP
        if may_stop and token in p.stop_token_ids:
            seq.stop_reason = token
            return FinishReason.STOP
        stop = detok.add_token(token, check_stop=may_stop)
        if stop is not None:
            seq.stop_reason = stop
            return FinishReason.STOP
        if seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.scheduler.finish(seq, reason)
        if self.speculative is not None:
            self.speculative.release(seq)
        self._seqs.pop(seq.request_id, None)
        self._finished[reason.value] += 1
        if reason is FinishReason.ABORT:
            self._detok.pop(seq.request_id, None)

    def _output(
        self, seq: Sequence, tokens: list[int], logprobs: list[SampleLogprobs], text: str
    ) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=tokens,
            new_text=text,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason.value if seq.finish_reason else None,
            stop_reason=seq.stop_reason,
            new_logprobs=logprobs,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_generation_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            prompt_logprobs=seq.prompt_logprobs
            if seq.prompt_logprobs and seq.num_output_tokens == 1
            else None,
        )

    def stats(self) -> EngineStats:
        bm = self.block_manager
        spec = self.speculative.stats if self.speculative is not None else SpecDecodeStats()
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=bm.usage,
            num_kv_blocks=bm.num_blocks,
            num_free_kv_blocks=bm.num_free_blocks,
            prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits,
            num_preemptions=self.scheduler.num_preemptions,
            prompt_tokens=self._prompt_tokens,
            generation_tokens=self._generation_tokens,
            num_finished=dict(self._finished),
            spec_decode_num_drafts=spec.num_drafts,
            spec_decode_num_draft_tokens=spec.num_draft_tokens,
            spec_decode_num_accepted_tokens=spec.num_accepted_tokens,
        )
