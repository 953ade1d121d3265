"""bench/llm.py's workloads, per-request traces and their summary, and the KV-waste arithmetic and replay."""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nereid.clients.report import percentile

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKEN_RANGE = (
    100,
    49000,
)  # random prompt ids: clear of SmolLM2's special tokens (ids < 17), inside the vocab
SYSTEMS = ("nereid", "static", "sequential")


# ---- workload ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    max_tokens: int


@dataclass(frozen=True)
class Workload:
    """Request lengths: uniform over the ranges, or lognormal around the medians (clipped to the ranges)
    when ``prompt_median`` / ``output_median`` are set."""

    prompt_range: tuple[int, int]
    output_range: tuple[int, int]
    min_requests: int = 8
    max_requests: int = 32
    seed: int = 0
    prompt_median: int | None = None
    output_median: int | None = None
    sigma: float = 1.0

    def requests_at(self, concurrency: int) -> int:
        return min(max(self.min_requests, 2 * concurrency), max(self.max_requests, concurrency))

    def lengths(self, n: int) -> list[tuple[int, int]]:
        """(prompt tokens, max_tokens) of the first ``n`` requests; a longer list starts with a shorter one."""
        rng = random.Random(self.seed)

        def draw(span: tuple[int, int], median: int | None) -> int:
            if median is None:
                return rng.randint(*span)
            return min(max(round(rng.lognormvariate(math.log(median), self.sigma)), span[0]), span[1])

        return [(draw(self.prompt_range, self.prompt_median), draw(self.output_range, self.output_median))
                for _ in range(n)]  # fmt: skip

    def level(self, concurrency: int) -> list[Request]:
        """The requests of one level: the common lengths, with prompt tokens drawn for this level only."""
        rng = random.Random(f"{self.seed}:{concurrency}")
        return [
            Request([rng.randrange(*TOKEN_RANGE) for _ in range(p)], m)
            for p, m in self.lengths(self.requests_at(concurrency))
        ]

    def describe(self, n: int) -> dict[str, Any]:
        """Mean, median and max of the prompt and output lengths of the first ``n`` requests."""
        lengths = self.lengths(n)
        stats: dict[str, Any] = {}
        for name, values in (("prompt", [p for p, _ in lengths]), ("output", [m for _, m in lengths])):
            stats[name] = {
                "mean": round(sum(values) / len(values), 1),
                "median": percentile(sorted(values), 50),
                "max": max(values),
            }
        return stats


WORKLOADS = {
    # Prefill-heavy: short uniform outputs; static batching wastes little on them.
    "short": Workload(prompt_range=(16, 256), output_range=(16, 64)),
    # Decode-heavy, shaped like the ShareGPT conversations vLLM benchmarks with (heavy-tailed prompt and
    # output lengths), scaled to about 0.4x of ShareGPT's means (~217 prompt / ~199 output tokens with a
    # Llama tokenizer) so that a run fits on 2 vCPUs: lognormal, sigma 1.0, medians 64 (prompt) and 48
    # (output), clipped to 4-512. Over many draws: prompts mean 101, median 64; outputs mean 77,
    # median 48, max 512. Up to 64 requests per level, so c=32 runs two static batches.
    # The peers comparison (bench/llm_peers.py): long prompts and outputs, uniform.
    "peers": Workload(prompt_range=(64, 512), output_range=(64, 256)),
    "sharegpt": Workload(
        prompt_range=(4, 512),
        output_range=(4, 512),
        max_requests=64,
        prompt_median=64,
        output_median=48,
        sigma=1.0,
    ),
}


# ---- per-request traces and their summary --------------------------------------------------------


@dataclass
class Trace:
    """One request: when it was submitted and when each of its tokens arrived (seconds, one clock)."""

    submitted: float
    token_times: list[float]
    prompt_tokens: int
    max_tokens: int
    started: float | None = None  # when service began (static batch start); None: at submission

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - (self.submitted if self.started is None else self.started)

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - (self.submitted if self.started is None else self.started)

    @property
    def gaps(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def tpot(self) -> float | None:
        return (self.token_times[-1] - self.token_times[0]) / (self.tokens - 1) if self.tokens > 1 else None


def pct_ms(values: Sequence[float], p: float, scale: float = 1000.0) -> float | None:
    return round(percentile(sorted(values), p) * scale, 1) if values else None


def summarize(
    system: str, concurrency: int, traces: list[Trace], seconds: float, **extra: Any
) -> dict[str, Any]:
    """One table row: tokens/s over the level's wall time, TTFT / ITL / TPOT percentiles in ms, e2e in s."""
    done = [t for t in traces if t.tokens]
    tokens = sum(t.tokens for t in done)
    gaps = [g for t in done for g in t.gaps]
    tpots = [x for t in done if (x := t.tpot) is not None]
    row: dict[str, Any] = {
        "system": system,
        "concurrency": concurrency,
        "requests": len(traces),
        "completed": len(done),
        "tokens": tokens,
        "expected_tokens": sum(t.max_tokens for t in traces),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
        "ttft_p50_ms": pct_ms([t.ttft for t in done], 50),
        "ttft_p99_ms": pct_ms([t.ttft for t in done], 99),
        "itl_p50_ms": pct_ms(gaps, 50),
        "itl_p99_ms": pct_ms(gaps, 99),
        "tpot_p50_ms": pct_ms(tpots, 50),
        "tpot_p99_ms": pct_ms(tpots, 99),
        "e2e_p50_s": pct_ms([t.e2e for t in done], 50, 1.0),
        "e2e_p99_s": pct_ms([t.e2e for t in done], 99, 1.0),
    }
    row.update(extra)
    return row


# ---- KV-cache waste ------------------------------------------------------------------------------


def kv_waste(seq_tokens: Sequence[int], allocated_blocks: int, block_size: int) -> tuple[float, float]:
    """(measured, bound): unused slots over allocated slots, and the paged bound ``n (bs - 1) / allocated``.

    ``seq_tokens`` are the tokens whose KV each running sequence holds; ``allocated_blocks`` the blocks
    they reference (shared blocks once).
    """
    slots = allocated_blocks * block_size
    if slots <= 0:
        return 0.0, 0.0
    return 1.0 - sum(seq_tokens) / slots, len(seq_tokens) * (block_size - 1) / slots


@dataclass
class WasteSamples:
    """Samples of (allocated slots, used slots, sequences); aggregates weight every slot equally."""

    block_size: int
    allocated: list[int] = field(default_factory=list)
    used: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    skipped: int = 0

    def add(self, seq_tokens: Sequence[int], allocated_blocks: int) -> None:
        self.allocated.append(allocated_blocks * self.block_size)
        self.used.append(sum(seq_tokens))
        self.seqs.append(len(seq_tokens))

    def summary(self) -> dict[str, Any]:
        total = sum(self.allocated)
        if not total:
            return {"samples": 0, "skipped": self.skipped}
        per = [1 - u / a for a, u in zip(self.allocated, self.used, strict=True) if a]
        return {
            "samples": len(self.allocated),
            "skipped": self.skipped,
            "waste": round(1 - sum(self.used) / total, 4),
            "waste_max": round(max(per), 4),
            "bound": round(sum(self.seqs) * (self.block_size - 1) / total, 4),
            "mean_allocated_slots": round(total / len(self.allocated), 1),
            "mean_running": round(sum(self.seqs) / len(self.seqs), 2),
        }


def replay_kv(
    lengths: Sequence[tuple[int, int]],
    concurrency: int,
    num_blocks: int,
    *,
    block_size: int = 16,
    max_num_seqs: int = 32,
    max_num_batched_tokens: int = 512,
    max_model_len: int = 2048,
    enable_prefix_caching: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """The closed loop of ``concurrency`` clients over ``lengths`` through the engine's own Scheduler and
    BlockManager, with a stand-in for the model (each step's scheduled tokens count as computed; a sequence
    whose tokens are all computed gets one random token). Waste is sampled after every step."""
    from nereid.backends.llm.block_manager import BlockManager
    from nereid.backends.llm.config import EngineConfig
    from nereid.backends.llm.sampling import SamplingParams
    from nereid.backends.llm.scheduler import Scheduler
    from nereid.backends.llm.sequence import FinishReason
    from nereid.backends.llm.sequence import Sequence as Seq

    config = EngineConfig(
        model="-",
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_prefix_caching=enable_prefix_caching,
    )
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching)
    scheduler = Scheduler(config, bm)
    rng = random.Random(seed)
    pending = deque(lengths)
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    samples = WasteSamples(block_size)
    batch_sizes: list[int] = []
    steps = 0

    def submit() -> None:
        p, m = pending.popleft()
        seq = Seq(f"r{steps}-{len(pending)}", [rng.randrange(*TOKEN_RANGE) for _ in range(p)], params, m)
        scheduler.add(seq)

    for _ in range(min(concurrency, len(pending))):
        submit()
    while scheduler.has_unfinished():
        scheduled = scheduler.schedule().scheduled
        steps += 1
        if not scheduled:
            raise RuntimeError(
                "replay: the scheduler made no progress (KV cache too small for one sequence?)"
            )
        batch_sizes.append(len(scheduled))
        for seq, n in scheduled:
            seq.num_computed_tokens += n
            bm.cache_full_blocks(seq)
            if seq.num_computed_tokens < seq.num_tokens:
                continue  # chunked prefill in progress
            seq.append_token(rng.randrange(*TOKEN_RANGE))
            if seq.num_output_tokens >= seq.max_tokens:
                scheduler.finish(seq, FinishReason.LENGTH)
                if pending:
                    submit()
        running = scheduler.running
        if running:
            blocks = {b for seq in running for b in seq.block_table}
            samples.add([seq.num_computed_tokens for seq in running], len(blocks))
    bm.check_no_leaks()
    demand = sum(-(-(p + m) // block_size) for p, m in lengths[:concurrency])
    return {
        **samples.summary(),
        "steps": steps,
        "preemptions": scheduler.num_preemptions,
        "mean_batch": round(sum(batch_sizes) / len(batch_sizes), 2),
        "num_kv_blocks": num_blocks,
        "blocks_to_hold_first_wave": demand,
    }
