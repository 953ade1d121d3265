"""The LLM engine alone (no server, no client): bench/llm.py's workload through ``LLMEngine`` in this process.

    python bench/llm_engine.py [--workload short|sharegpt|peers] [--concurrency 32] [--threads N]
                               [--dtype bfloat16] [--kernels auto|native|torch] [--weights q8_0]
                               [--block-size 8] [--max-num-batched-tokens 512] [--kv-cache-bytes 384MiB]
                               [--repeat 1] [--json out.json] [--decode 1,8,32]

A closed loop of ``c`` clients: ``c`` requests are added, the engine steps, and every finished request is
replaced by the next until the level's requests are done. Reports tokens/s, ms per step (mean and by batch
size), the mean batch and the KV-cache waste sampled after every step (the replay of bench/llm.py with the
real model). The example ``smollm2`` config is the default; the flags override it. Used to time changes to
the engine (block size, attention, threads, the prefill budget) without the server's noise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("nereid_bench_llm", _BENCH / "llm.py")
assert _spec is not None and _spec.loader is not None
llm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = llm
_spec.loader.exec_module(llm)

import llm_nereid  # noqa: E402  (on sys.path once bench/llm.py is loaded)
import llm_workload  # noqa: E402  (on sys.path once bench/llm.py is loaded)


def engine_config(overrides: dict[str, Any]) -> Any:
    from nereid.backends.llm import serving
    from nereid.backends.llm.config import EngineConfig

    params = llm_nereid.example_parameters()
    values: dict[str, Any] = {"model": str(serving.resolve_path(params["model"], _BENCH))}
    for key, text in params.items():
        if key in serving._PARSERS:
            values[key] = serving._PARSERS[key](text)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return EngineConfig(**values)


def run_level(engine: Any, requests: list[Any], concurrency: int) -> dict[str, Any]:
    from nereid.backends.llm.sampling import SamplingParams

    bm = engine.block_manager
    pending = list(enumerate(requests))[::-1]
    samples = llm_workload.WasteSamples(bm.block_size)
    steps: list[tuple[int, int, float]] = []  # (sequences, tokens, seconds)
    tokens = 0

    def submit() -> None:
        i, req = pending.pop()
        params = SamplingParams(temperature=0.0, max_tokens=req.max_tokens, ignore_eos=True)
        engine.add_request(f"r{i}", req.prompt, params)

    for _ in range(min(concurrency, len(pending))):
        submit()
    start = time.perf_counter()
    while engine.has_unfinished():
        t = time.perf_counter()
        outputs = engine.step()
        dt = time.perf_counter() - t
        running = engine.scheduler.running
        steps.append((len(outputs), sum(len(o.new_token_ids) for o in outputs), dt))
        for out in outputs:
            tokens += len(out.new_token_ids)
            if out.finished and pending:
                submit()
        if running:
            blocks = {b for seq in running for b in seq.block_table}
            samples.add([seq.num_computed_tokens for seq in running], len(blocks))
    seconds = time.perf_counter() - start
    bm.check_no_leaks()
    times = [s for _, _, s in steps]
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "steps": len(steps),
        "ms_per_step": round(1000 * statistics.fmean(times), 1),
        "mean_batch": round(statistics.fmean(n for n, _, _ in steps), 2),
        "kv": samples.summary(),
        "preemptions": engine.scheduler.num_preemptions,
    }


def decode_steps(engine: Any, batch: int, context: int = 128, steps: int = 24) -> float:
    """Median ms of one decode step with ``batch`` sequences holding ``context`` tokens each."""
    import random

    from nereid.backends.llm.sampling import SamplingParams

    rng = random.Random(batch)
    params = SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True)
    for i in range(batch):
        engine.add_request(
            f"d{batch}-{i}", [rng.randrange(*llm_workload.TOKEN_RANGE) for _ in range(context)], params
        )
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running) or (
        engine.scheduler.waiting
    ):
        engine.step()
    times = []
    while engine.has_unfinished():
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(llm_workload.WORKLOADS), default="short")
    parser.add_argument("--concurrency", default="32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--kv-cache-bytes", default=None)
    parser.add_argument("--dtype", default=None, help="override the example's dtype (e.g. bfloat16)")
    parser.add_argument("--kernels", default=None, help="auto | native | torch (EngineConfig.kernels)")
    parser.add_argument("--weights", default=None, help="float | int8 | int4 | q8_0")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--decode", default=None, help="BATCHES: only time decode steps at these batch sizes (e.g. 1,8,32)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from nereid.backends.llm import LLMEngine
    from nereid.backends.llm.serving import _size

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = engine_config(
        {
            "block_size": args.block_size,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "kv_cache_bytes": _size(args.kv_cache_bytes) if args.kv_cache_bytes else None,
            "dtype": args.dtype,
            "kernels": args.kernels,
            "weights": args.weights,
        }
    )
    engine = LLMEngine(config)
    workload = llm_workload.WORKLOADS[args.workload]
    warm = [llm_workload.Request(list(range(300 + 40 * i, 340 + 40 * i)), 4) for i in range(4)]
    run_level(engine, warm, 4)
    meta = {
        "uptime_before": llm.uptime(),
        "threads": torch.get_num_threads(),
        "block_size": config.block_size,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "num_kv_blocks": engine.block_manager.num_blocks,
        "workload": args.workload,
    }
    print(meta, flush=True)
    if args.decode:
        for _ in range(args.repeat):
            ms = {b: round(decode_steps(engine, b), 1) for b in (int(x) for x in args.decode.split(","))}
            print(json.dumps({"decode_ms_per_step": ms}), flush=True)
        return 0
    rows = []
    for c in (int(x) for x in args.concurrency.split(",")):
        requests = workload.level(c)
        for _ in range(args.repeat):
            row = run_level(engine, requests, c)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta["uptime_after"] = llm.uptime()
    print(meta["uptime_after"])
    if args.json is not None:
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
