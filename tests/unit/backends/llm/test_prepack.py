"""bfloat16 projections with oneDNN-prepacked weights (`prepack`): same products as F.linear, used end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nereid.backends.llm import SamplingParams
from nereid.backends.llm.prepack import PrepackedLinear, available

needs_bf16 = pytest.mark.skipif(
    not available(torch.bfloat16, torch.device("cpu")), reason="no oneDNN bfloat16 kernels on this CPU"
)


@needs_bf16
@pytest.mark.parametrize("rows", [1, 3, 8, 64])
def test_packed_linear_matches_f_linear(rows):
    torch.manual_seed(0)
    linear = nn.Linear(96, 80, bias=True).to(torch.bfloat16)
    packed = PrepackedLinear.of(linear)
    x = torch.randn(2, rows, 96, dtype=torch.bfloat16)  # leading dims are flattened and restored
    out = packed(x)
    assert out.shape == (2, rows, 80) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.linear(x, linear.weight, linear.bias), atol=0.05, rtol=0.02)


@needs_bf16
def test_bfloat16_engine_packs_and_generates(make_engine, run, collect_tokens):
    engine = make_engine(dtype="bfloat16")
    model = engine.model_runner.model
    assert isinstance(model.lm_head, PrepackedLinear)
    assert isinstance(model.model.layers[0].mlp.gate_up_proj, PrepackedLinear)
    engine.add_request("a", "Paris is the", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    tokens = collect_tokens(run(engine)["a"])
    assert len(tokens) == 8


def test_float32_engine_is_not_packed(make_engine):
    """The default stays on F.linear: float32 greedy output is compared with transformers token for token."""
    engine = make_engine()
    assert isinstance(engine.model_runner.model.lm_head, nn.Linear)
