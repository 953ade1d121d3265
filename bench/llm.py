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
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nereid.clients.loadgen import process_cpu
from nereid.clients.report import ProgressLine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_hf import HFRunner, Service, continuous_ceiling, sequential_level, static_level
from llm_nereid import Server, example_parameters, nereid_level, repository
from llm_workload import SYSTEMS, WORKLOADS, Request, pct_ms, replay_kv, summarize

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
            server.wait_ready(timeout=300.0)  # loading the model takes a while
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
                        service_ttft_p50_ms=pct_ms([s.offsets[0] for s in services[: len(requests)]], 50),
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
