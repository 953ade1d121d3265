"""``weights: q8_0``'s kernel against bfloat16 oneDNN (prepacked) on SmolLM2-135M's matmul shapes, by rows M.

    python bench/llm_q8_0_matmul.py [--rows 1,8,32,256] [--threads N] [--engine-prompt 256]

Part 1 (kernels only): one pass over a whole model's projections and LM head — 30 layers of distinct random
weights (so they stream from memory as in a real step, not from cache) — with M activation rows: M = 1 is a
single-stream decode step, 8 / 32 a batch of decodes, 256 a prefill chunk. Median wall and process-CPU ms.
Part 2 (the engine): the prefill step of one `--engine-prompt`-token prompt on the SmolLM2 GGUF per design.
Part 3 (`--error`): every projection's and the LM head's real inputs in one float32 prefill of
bench/llm_quant.py's prompts joined, multiplied by each path — the integer path (calls of 16 rows), the AMX
bfloat16 path (the whole prefill in one call) — and by bfloat16 x bfloat16 weights; the relative error
(Frobenius, all layers together) against the float32 outputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_quant import smollm2_path

LAYER = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv, o, gate_up, down: (out, in)
SHAPES = LAYER * 30 + [(49152, 576)]  # + the LM head


def timed(fn: Callable[..., object], repeats: int, *args: object) -> tuple[float, float]:
    fn(*args)
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn(*args)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def run_q8(weights: list[tuple[torch.Tensor, torch.Tensor]], x: dict[int, torch.Tensor]) -> None:
    from nereid.backends.llm import native

    for (w, s), (n, k) in zip(weights, SHAPES, strict=True):
        native.q8_0_linear(x[k], w, s, n)


def run_bf16(packed: list[torch.Tensor], x: dict[int, torch.Tensor]) -> None:
    for p, (_, k) in zip(packed, SHAPES, strict=True):
        torch.ops.mkldnn._linear_pointwise(x[k], p, None, "none", [], "")


def prefill(engine: Any, tokens: int) -> None:
    """One prompt of `tokens` random ids (a new one each call: no prefix-cache hits) to its first token."""
    from nereid.backends.llm import SamplingParams

    prompt = torch.randint(1000, 40000, (tokens,)).tolist()
    engine.add_request("p", prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()


def kernels(rows: list[int]) -> None:
    from nereid.backends.llm import native, q8_0

    assert native.load(), "the native kernels did not build"
    torch.manual_seed(0)
    q8 = [q8_0.pack(torch.randn(n, k) * 0.02) for n, k in SHAPES]
    bf16 = [torch.ops.mkldnn._reorder_linear_weight(torch.randn(n, k).bfloat16() * 0.02) for n, k in SHAPES]
    for m in rows:
        xs = {k: torch.randn(m, k) for k in (576, 1536)}
        xb = {k: x.bfloat16() for k, x in xs.items()}

        repeats = 10 if m <= 32 else 3
        results = {
            "q8_0 (float32 x)": timed(run_q8, repeats, q8, xs),
            "q8_0 (bfloat16 x)": timed(run_q8, repeats, q8, xb),
            "bfloat16 oneDNN": timed(run_bf16, repeats, bf16, xb),
        }
        print(f"M={m:4d}  " + "  ".join(f"{k} {w:7.1f} ms (cpu {c:7.1f})" for k, (w, c) in results.items()))


def engine_prefill(tokens: int) -> None:
    from nereid.backends.llm import EngineConfig, LLMEngine

    designs = {"float32": {}, "bfloat16": {"dtype": "bfloat16"}, "q8_0": {"weights": "q8_0"}}
    for name, options in designs.items():
        engine = LLMEngine(EngineConfig(model=str(smollm2_path()), max_model_len=1024, **options))  # type: ignore[arg-type]
        wall, cpu = timed(prefill, 3, engine, tokens)
        print(f"prefill of {tokens} tokens  {name:9s} {wall:7.1f} ms (cpu {cpu:7.1f})", flush=True)


def matmul_error() -> None:
    from llm_quant import PROMPTS

    from nereid.backends.llm import EngineConfig, LLMEngine, SamplingParams, native, q8_0

    engine = LLMEngine(EngineConfig(model=str(smollm2_path()), max_model_len=512))
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def keep(module: Any, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        captured.append((module.weight.detach(), x.clone(), out.reshape(-1, out.shape[-1]).clone()))

    linears = [m for m in engine.model_runner.model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(keep) for m in linears]
    engine.add_request("p", " ".join(PROMPTS), SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    for h in hooks:
        h.remove()
    paths = {
        "integer (16-row calls)": lambda x, q, s, n: torch.cat(
            [native.q8_0_linear(c, q, s, n) for c in x.split(16)]
        ),
        f"AMX bfloat16 (one call, from {native.q8_0_amx_rows()} rows)": native.q8_0_linear,
        "bfloat16 x bfloat16 weights": None,
    }
    for name, path in paths.items():
        err = ref = 0.0
        for w, x, y in captured:
            if path is None:
                out = (x.bfloat16() @ w.bfloat16().T).float()
            else:
                out = path(x, *q8_0.pack(w), w.shape[0])
            err += (out - y).pow(2).sum().item()
            ref += y.pow(2).sum().item()
        print(
            f"{len(captured)} matmuls x {captured[0][1].shape[0]} rows  {name:40s} relative error {(err / ref) ** 0.5:.5f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1,8,32,256")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--engine-prompt", type=int, default=256, help="0: skip part 2")
    parser.add_argument("--error", action="store_true", help="part 3 only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}", flush=True)
    if args.error:
        matmul_error()
        return
    kernels([int(m) for m in args.rows.split(",")])
    if args.engine_prompt:
        engine_prefill(args.engine_prompt)


if __name__ == "__main__":
    main()
