"""Speculative decoding's speed-up in the LLM engine (no server): a repeating and a non-repeating workload.

    python bench/llm_spec.py [--methods plain,ngram,draft] [--concurrency 1,8] [--requests 8]
                             [--max-tokens 64] [-k 4] [--draft-layers 8] [--json out.json]

Both workloads run in the same process, through the example ``smollm2`` engine config (SmolLM2-135M,
float32), greedy with the chat template and eos honoured (greedy speculative output equals plain output, so
every method generates the same tokens). *repeating*: rewrite a short Python function with a variable
renamed, or quote a sentence and summarise it (the answer copies much of the prompt); *non-repeating*:
open questions. A closed loop of ``c`` clients per level. Reports output tokens/s, the time per output
token (TPOT: a request's decode time over its tokens after the first) and the inter-token latency as a
client sees it (ITL: the gap between streamed chunks, a chunk holding every token of one step), p50/p99,
plus the draft acceptance rate. ``draft`` drafts with SmolLM2 cut to its first ``--draft-layers`` layers (a
stand-in: a real deployment pairs a large target with a small model of the same tokenizer, e.g.
SmolLM2-1.7B drafted by SmolLM2-135M).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("nereid_bench_llm_engine", _BENCH / "llm_engine.py")
assert _spec is not None and _spec.loader is not None
llm_engine = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = llm_engine
_spec.loader.exec_module(llm_engine)

from nereid.clients.report import percentile  # noqa: E402

NAMES = ["total", "count", "value", "acc", "buffer", "items", "score", "limit", "offset", "speed"]
TOPICS = ["the sea at night", "a city in the rain", "learning to cook", "an old library", "the first snow",
          "a train journey", "a garden in spring", "the night sky"]  # fmt: skip
QUOTES = [
    "Sales grew by ten percent in the north and by five percent in the south, while costs stayed flat.",
    "The bridge will close for repairs from the first of May until the end of June, except at weekends.",
    "Our new library opens at nine every morning and lends up to twelve books to each member at a time.",
    "The river rose two metres overnight after heavy rain, and three villages were told to leave at once.",
]


def code_prompt(rng: random.Random) -> str:
    a, b, c = rng.sample(NAMES, 3)
    code = (
        f"def update({a}, {b}):\n    {c} = 0\n    for x in {b}:\n        if x > {a}:\n"
        f"            {c} = {c} + x * 2\n        else:\n            {c} = {c} - x\n    return {c}\n"
    )
    new = rng.choice([n for n in NAMES if n not in (a, b, c)])
    return f"Rename the variable {c} to {new} in this Python code and print the whole code.\n\n{code}"


def prompts(kind: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    if kind == "repeating":
        quote = 'The report said: "{}" Quote the sentence exactly, then summarise it in one line.'
        return [
            code_prompt(rng) if i % 2 == 0 else quote.format(QUOTES[i // 2 % len(QUOTES)]) for i in range(n)
        ]
    return [f"Write a short poem about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def run_level(engine: Any, chats: list[list[int]], concurrency: int, max_tokens: int) -> dict[str, Any]:
    from nereid.backends.llm.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    pending = list(enumerate(chats))[::-1]
    arrivals: dict[str, float] = {}
    chunks: dict[str, list[tuple[float, int]]] = {}
    before = engine.stats()

    def submit() -> None:
        i, prompt = pending.pop()
        arrivals[f"r{i}"] = time.perf_counter()
        engine.add_request(f"r{i}", prompt, params)

    for _ in range(min(concurrency, len(pending))):
        submit()
    start = time.perf_counter()
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            chunks.setdefault(out.request_id, []).append((now, len(out.new_token_ids)))
            if out.finished and pending:
                submit()
    seconds = time.perf_counter() - start
    engine.block_manager.check_no_leaks()
    itl, tpot = [], []
    for trace in chunks.values():
        itl += [b[0] - a[0] for a, b in itertools.pairwise(trace)]
        after_first = sum(n for _, n in trace) - 1
        if after_first > 0:
            tpot.append((trace[-1][0] - trace[0][0]) / after_first)
    after = engine.stats()
    drafted = after.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens
    accepted = after.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens
    tokens = after.generation_tokens - before.generation_tokens
    itl.sort()
    return {
        "concurrency": concurrency,
        "requests": len(chats),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "tpot_ms_mean": round(1000 * statistics.fmean(tpot), 1) if tpot else None,
        "itl_ms_p50": round(1000 * percentile(itl, 50), 1) if itl else None,
        "itl_ms_p99": round(1000 * percentile(itl, 99), 1) if itl else None,
        "acceptance": round(accepted / drafted, 3) if drafted else None,
        "tokens_per_chunk": round(tokens / max(1, sum(len(tr) for tr in chunks.values())), 2),
    }


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}])
    return list(tokenizer.encode(rendered, add_special_tokens=False))


def speculative(method: str, k: int, draft_layers: int, model: str) -> Any:
    from nereid.backends.llm.config import SpeculativeConfig

    if method == "plain":
        return None
    if method == "ngram":
        return SpeculativeConfig(method="ngram", num_speculative_tokens=k, prompt_lookup_max=4)
    return SpeculativeConfig(
        method="draft_model", model=model, num_speculative_tokens=k, draft_num_layers=draft_layers
    )


def step_cost(k: int, context: int = 256, reps: int = 15) -> dict[str, float]:
    """Median ms of a target forward over 1 token and over k + 1 tokens (a verification) at ``context``
    tokens, interleaved so both see the same machine load: the break-even tokens per step."""
    from nereid.backends.llm import LLMEngine
    from nereid.backends.llm.sampling import SamplingParams

    engine = LLMEngine(llm_engine.engine_config({"enable_prefix_caching": False}))
    engine.add_request("c", list(range(1000, 1000 + context)), SamplingParams(temperature=0.0, max_tokens=2))
    engine.step()  # prefill
    seq = engine.scheduler.running[0]
    times: dict[int, list[float]] = {1: [], k + 1: []}
    for _ in range(reps):
        for n in times:
            engine.block_manager.append_slots(seq, n)
            seq.token_ids += [1000] * (n - 1)
            t = time.perf_counter()
            _, hidden, _meta = engine.model_runner.forward([(seq, n)])
            engine.model_runner.sample(hidden, list(range(n)), [seq] * n)
            times[n].append(time.perf_counter() - t)
            del seq.token_ids[len(seq.token_ids) - (n - 1) :]
    engine.abort("c")
    one, many = (1000 * statistics.median(times[n]) for n in times)
    return {"ms_1_token": round(one, 1), f"ms_{k + 1}_tokens": round(many, 1), "ratio": round(many / one, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="plain,ngram,draft")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--requests", type=int, default=8, help="requests per level (at least c)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("-k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--draft-layers", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--step-cost", action="store_true", help="only time a 1-token vs a k+1-token forward")
    args = parser.parse_args(argv)
    if args.step_cost:
        print(json.dumps({"uptime": llm_engine.llm.uptime(), **step_cost(args.k)}), flush=True)
        return 0

    from nereid.backends.llm import LLMEngine

    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict[str, Any]] = []
    meta = {"uptime_before": llm_engine.llm.uptime(), "max_tokens": args.max_tokens, "k": args.k}
    print(json.dumps(meta), flush=True)
    for method in args.methods.split(","):
        base = llm_engine.engine_config({})
        config = llm_engine.engine_config(
            {"speculative_config": speculative(method, args.k, args.draft_layers, base.model)}
        )
        engine = LLMEngine(config)
        tok = engine.tokenizer
        engine.add_request("warm", tok.encode("Hello there"), None)
        while engine.has_unfinished():
            engine.step()
        for kind in ("repeating", "non-repeating"):
            for c in levels:
                texts = prompts(kind, max(args.requests, c))
                chats = [chat_ids(tok, t) for t in texts]
                row = {"method": method, "workload": kind, **run_level(engine, chats, c, args.max_tokens)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        del engine
    meta["uptime_after"] = llm_engine.llm.uptime()
    print(json.dumps(meta), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
