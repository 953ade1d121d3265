"""`compile: true`: decode-only steps through torch.compile give the eager engine's greedy tokens."""

from __future__ import annotations

import random
import shutil

import pytest
from safetensors.torch import load_file, save_file

from nereid.backends.llm import EngineConfig, SamplingParams

MAX_NEW = 12
LENGTHS = [1, 4, 5, 9, 16, 17, 33]  # contexts across block boundaries; batches of 7 decodes, then fewer


def prompts(seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(n)] for n in LENGTHS]


def generate(engine, batch: list[list[int]], one_at_a_time: bool, run, collect_tokens) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    outputs = {}
    for i, prompt in enumerate(batch):
        engine.add_request(str(i), prompt, params)
        if one_at_a_time:
            outputs.update(run(engine))
    outputs.update(run(engine))
    return [collect_tokens(outputs[str(i)]) for i in range(len(batch))]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_compiled_decode_matches_eager(model, make_engine, llama_dir, qwen2_dir, run, collect_tokens):
    path = str(llama_dir if model == "llama" else qwen2_dir)
    eager = make_engine(model=path)
    compiled = make_engine(model=path, compile=True)
    assert compiled.model_runner.compiled_decode is not None
    assert compiled.model_runner.compiled_decode.compile_seconds > 0  # compiled at load, not on a request
    for one_at_a_time in (True, False):  # batch 1 (its own graph), then batches of 2..7 (the dynamic one)
        expected = generate(eager, prompts(), one_at_a_time, run, collect_tokens)
        got = generate(compiled, prompts(), one_at_a_time, run, collect_tokens)
        assert all(len(tokens) == MAX_NEW for tokens in got)
        assert got == expected


@pytest.mark.slow
def test_two_compiled_models_of_one_shape_keep_their_own_weights(
    make_engine, llama_dir, tmp_path, run, collect_tokens
):
    """Frozen weights live in the graph: a second model of the same architecture must not run the first's."""
    other = tmp_path / "other"
    shutil.copytree(llama_dir, other)
    weights = next(other.glob("*.safetensors"))
    tensors = load_file(weights)
    save_file({name: t.flip(0).contiguous() if t.dim() == 2 else t for name, t in tensors.items()}, weights)
    first = make_engine(compile=True)
    second = make_engine(model=str(other), compile=True)
    for path, compiled in ((llama_dir, first), (other, second)):
        expected = generate(make_engine(model=str(path)), prompts(), False, run, collect_tokens)
        assert generate(compiled, prompts(), False, run, collect_tokens) == expected


def test_eager_by_default(make_engine):
    assert make_engine().model_runner.compiled_decode is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dtype": "bfloat16"}, "compile needs dtype float32"),
        ({"weights": "int8"}, "compile needs dtype float32 and weights float"),
    ],
)
def test_compile_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model="x", compile=True, **overrides)
