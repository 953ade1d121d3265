"""Single-stream decode step: one greedy sequence through the engine, per design, against float32.

    python bench/llm_decode_step.py [--designs float32,bfloat16,...] [--steps 48] [--profile-steps 12]
                                    [--agreement-tokens 24] [--threads N] [--json out.json]

Each design is an `EngineConfig` on the example SmolLM2 GGUF (loaded through the engine's own loader),
optionally followed by a change to the loaded model (designs not wired into the config). For each: the
resident weight bytes, `--steps` decode steps of one greedy request after its prefill (median / p90 ms per
`engine.step()`), the ratio to the float32 median, a torch.profiler split of `--profile-steps` steps
(matmul ops vs other ops, self CPU time, and the rest of the wall time as Python), and the greedy agreement
with float32 over bench/llm_quant.py's prompts (share of equal positions). A big tensor copy gives the
memory bandwidth, hence the floor of a step that reads every weight once: resident bytes / bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_quant import PROMPTS, agreement, greedy, smollm2_path

MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "mkldnn::_linear_pointwise",
    "aten::_weight_int8pack_mm",
    "aten::_weight_int4pack_mm_for_cpu",
    "quantized::linear_dynamic",
    "nereid_native::q8_0_linear",
    "nereid_native::q4_1_linear",
)
"""Profiler event names counted as projections / LM head (self time; `aten::linear` itself is a wrapper)."""


def unfuse(model: Any) -> None:
    """Design (a)'s counterpoint: q/k/v and gate/up as separate GEMMs again (the same weights, split)."""
    from torch import nn

    class Split(nn.Module):
        def __init__(self, fused: nn.Linear, sizes: list[int]) -> None:
            super().__init__()
            ws = fused.weight.data.split(sizes)
            bs = fused.bias.data.split(sizes) if fused.bias is not None else [None] * len(sizes)
            self.parts = nn.ModuleList()
            for w, b in zip(ws, bs, strict=True):
                part = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
                part.weight.data, part.bias = w.clone(), None if b is None else nn.Parameter(b.clone())
                self.parts.append(part)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([p(x) for p in self.parts], dim=-1)

    cfg = model.config
    hd = cfg.head_dim
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        attn.qkv_proj = Split(attn.qkv_proj, [q, kv, kv])
        mlp.gate_up_proj = Split(mlp.gate_up_proj, [cfg.intermediate_size] * 2)


def dynamic_int8(model: Any) -> None:
    """Design (b): fbgemm/oneDNN dynamic int8 (`quantized::linear_dynamic`): int8 weights per output row,
    activations quantised per call (per token: rows are normalised to max 1 first, then scaled back)."""
    import warnings

    from torch import nn

    class DynamicInt8Linear(nn.Module):
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            w = linear.weight.data.float()
            scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
            with warnings.catch_warnings():  # quantize_per_channel is deprecated, still the prepack's input
                warnings.simplefilter("ignore")
                q = torch.quantize_per_channel(
                    w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8
                )
            bias = None if linear.bias is None else linear.bias.data.float()
            self.packed = torch.ops.quantized.linear_prepack(q, bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            if x.shape[0] == 1:
                return torch.ops.quantized.linear_dynamic(x, self.packed, False)
            r = x.abs().amax(-1, keepdim=True).clamp_min(1e-12)
            return torch.ops.quantized.linear_dynamic(x / r, self.packed, False) * r

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, DynamicInt8Linear(child))
    model.lm_head = DynamicInt8Linear(model.lm_head)


Design = tuple[dict[str, Any], Callable[[Any], None] | None, tuple[float, float]]
"""EngineConfig options, a change to the loaded model, bytes per weight read (projections, LM head)."""
DESIGNS: dict[str, Design] = {
    "float32": ({}, None, (4, 4)),
    "float32-unfused": ({}, unfuse, (4, 4)),
    "bfloat16": ({"dtype": "bfloat16"}, None, (2, 2)),
    "int8": ({"weights": "int8"}, None, (1, 1)),
    "int4": ({"weights": "int4"}, None, (0.75, 1)),  # 4 bits + a float scale and offset per 32
    "int8-dynamic": ({}, dynamic_int8, (1, 1)),
    "q8_0": ({"weights": "q8_0"}, None, (1.125, 1.125)),  # int8 + a float32 scale per 32
    "q8_0-bfloat16": ({"weights": "q8_0", "dtype": "bfloat16"}, None, (1.125, 1.125)),
    "q4_1": ({"weights": "q4_1"}, None, (0.75, 1.125)),  # 4 bits + float32 d and m per 32; head q8_0
    "float32-compiled": ({"compile": True}, None, (4, 4)),
}


def streamed_bytes(cfg: Any, per_weight: tuple[float, float]) -> float:
    """Bytes a decode step must read: every projection weight and the LM head once (not the embedding)."""
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    layer = h * (h + 2 * kv) + h * h + 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * layer * per_weight[0] + cfg.vocab_size * h * per_weight[1]


def make_engine(name: str) -> Any:
    from nereid.backends.llm import EngineConfig, LLMEngine

    options, change, _ = DESIGNS[name]
    config = EngineConfig(
        model=str(smollm2_path()), max_model_len=512, kv_cache_bytes=64 << 20, block_size=8, **options
    )
    engine = LLMEngine(config)
    if change is not None:
        change(engine.model_runner.model)
    return engine


def decode_steps(engine: Any, steps: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each `engine.step()` of one greedy request, after its prefill and two
    warm-up steps (CPU time is steadier on a shared machine when torch runs one thread)."""
    from nereid.backends.llm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=steps + 3, ignore_eos=True)
    engine.add_request("step", PROMPTS[1], params)
    for _ in range(3):
        engine.step()
    times, cpu = [], []
    while engine.has_unfinished():
        start, start_cpu = time.perf_counter(), time.process_time()
        engine.step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times, cpu


def profile_split(engine: Any, steps: int) -> dict[str, float]:
    """ms per step: matmul ops, other ops (profiler self CPU time), and the rest of the wall time."""
    from torch.profiler import ProfilerActivity, profile

    from nereid.backends.llm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True)
    engine.add_request("prof", PROMPTS[2], params)
    engine.step()  # the prefill, outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        while engine.has_unfinished():
            engine.step()
        wall = time.perf_counter() - start
    matmul = other = 0.0
    for event in prof.key_averages():
        us = event.self_cpu_time_total
        if event.key in MATMUL_OPS:
            matmul += us
        elif event.key.startswith(
            ("aten::", "mkldnn::", "quantized::", "nereid_native::", "Torch-Compiled", "torch::", "inductor")
        ):
            other += us
    n = steps
    return {
        "matmul_ms": matmul / 1000 / n,
        "other_ops_ms": other / 1000 / n,
        "python_ms": max(0.0, wall * 1000 - (matmul + other) / 1000) / n,
        "profiled_step_ms": wall * 1000 / n,
    }


def bandwidth_gbs(mib: int = 1024, repeats: int = 5) -> tuple[float, float]:
    """(read, copy) bandwidth in GB/s, best of `repeats`: one float32 matrix-vector product over a `mib` MiB
    matrix (bytes read: the access pattern of a decode step's weights), and a copy of it (read + written)."""
    src = torch.ones(mib << 18, dtype=torch.float32)
    dst = torch.empty_like(src)
    matrix, vector = src.view(-1, 4096), torch.ones(1, 4096)
    read = copy = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(vector, matrix)
        read = min(read, time.perf_counter() - start)
        start = time.perf_counter()
        dst.copy_(src)
        copy = min(copy, time.perf_counter() - start)
    return src.nbytes / read / 1e9, 2 * src.nbytes / copy / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--designs", default="float32,float32-unfused,bfloat16,int8")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--profile-steps", type=int, default=12)
    parser.add_argument("--agreement-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nereid.backends.llm.quant import resident_weight_bytes

    read_bw, copy_bw = bandwidth_gbs()
    print(
        f"load average {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}; read bandwidth "
        f"{read_bw:.1f} GB/s, copy {copy_bw:.1f} GB/s (read + write)",
        flush=True,
    )
    names = args.designs.split(",")
    if names[0] != "float32":
        names.insert(0, "float32")  # the baseline of the ratio and of the agreement
    rows: list[dict[str, Any]] = []
    base_ms = 0.0
    reference: list[list[int]] | None = None
    for name in names:
        load_start = time.perf_counter()
        engine = make_engine(name)
        load_s = time.perf_counter() - load_start
        outputs = greedy(engine, PROMPTS, args.agreement_tokens)  # also warms up (and compiles) the design
        reference = reference or outputs
        times, cpu = decode_steps(engine, args.steps)
        times.sort()
        median = 1000 * statistics.median(times)
        base_ms = base_ms or median
        weight_mb = resident_weight_bytes(engine.model_runner.model) / 1e6
        row = {
            "design": name,
            "median_ms": median,
            "p90_ms": 1000 * times[int(0.9 * (len(times) - 1))],
            "ratio": median / base_ms,
            "cpu_ms": 1000 * statistics.median(cpu),
            "weight_mb": weight_mb,
            "floor_ms": streamed_bytes(engine.checkpoint_config, DESIGNS[name][2]) / read_bw / 1e6,
            "load_s": load_s,
            "agreement": agreement(reference, outputs)["positions"],
            **profile_split(engine, args.profile_steps),
            "loadavg": os.getloadavg()[0],
        }
        rows.append(row)
        print(
            f"{name:18s} {row['median_ms']:6.1f} ms p90 {row['p90_ms']:6.1f} cpu {row['cpu_ms']:6.1f}  "
            f"x{row['ratio']:.2f}  "
            f"weights {weight_mb:6.0f} MB (floor {row['floor_ms']:4.1f} ms)  agree {row['agreement']:.3f}  "
            f"matmul {row['matmul_ms']:5.1f} other {row['other_ops_ms']:5.1f} python {row['python_ms']:5.1f}  "
            f"load {load_s:5.1f} s  [loadavg {row['loadavg']:.2f}]",
            flush=True,
        )
        del engine
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
