"""Tiny offline models (random Llama / Qwen2 + a locally trained byte-level BPE tokenizer) and engine fixtures.

Every engine made through `make_engine` is checked for leaked KV blocks when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from nereid.backends.llm import EngineConfig, LLMEngine, RequestOutput, SamplingParams

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Hello world, hello tokens! Stop here.",
    "Café, naïve, 東京, emoji 😀 too.",
    "def f(x): return x + 1",
] * 3
MODEL_KW = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.3,  # peaked logits: few near-ties between the top two tokens
)
NEAR_TIE = 1e-4


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llm_builder: Callable[..., None]) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llm_builder(path, CORPUS, vocab_size=400, arch="llama", **MODEL_KW)
    return path


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llm_builder: Callable[..., None]) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_llm_builder(path, CORPUS, vocab_size=400, arch="qwen2", tie_word_embeddings=True, **MODEL_KW)
    return path


@pytest.fixture
def make_engine(llama_dir: Path) -> Iterator[Callable[..., LLMEngine]]:
    """`make_engine(**EngineConfig overrides)`; defaults to the tiny Llama with 4-token blocks."""
    engines: list[LLMEngine] = []

    def make(**overrides: object) -> LLMEngine:
        kw: dict = dict(model=str(llama_dir), block_size=4, max_num_seqs=8, max_num_batched_tokens=128)
        kw.update(overrides)
        engine = LLMEngine(EngineConfig(**kw))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.block_manager.check_no_leaks(engine.scheduler.running)
        if not engine.has_unfinished():
            assert engine.stats().kv_cache_usage == 0.0


def drain(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, list[RequestOutput]]:
    """Step until nothing is left; outputs grouped by request id."""
    outputs: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        if not engine.has_unfinished():
            return outputs
    raise AssertionError("engine did not finish")


@pytest.fixture
def run() -> Callable[..., dict[str, list[RequestOutput]]]:
    return drain


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    return [t for out in outputs for t in out.new_token_ids]


@pytest.fixture
def collect_tokens() -> Callable[[list[RequestOutput]], list[int]]:
    return tokens_of


@pytest.fixture(scope="session")
def hf_greedy() -> Callable[[Path, list[list[int]], int], list[tuple[list[int], int]]]:
    """Reference greedy continuations from `transformers` `generate()`, one prompt at a time.

    Returns per prompt (tokens, trusted): `trusted` counts the leading tokens before the first step whose
    top-1/top-2 logit margin is below NEAR_TIE (beyond it, float noise may legitimately flip the argmax).
    """
    from transformers import AutoModelForCausalLM

    cache: dict[tuple, list[tuple[list[int], int]]] = {}

    def reference(path: Path, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], int]]:
        key = (str(path), tuple(map(tuple, prompts)), max_new_tokens)
        if key not in cache:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            results = []
            for prompt in prompts:
                out = model.generate(
                    torch.tensor([prompt]),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=0,
                )
                margins = [float(v[0] - v[1]) for v in (lg[0].topk(2).values for lg in out.logits)]
                trusted = next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(margins))
                results.append((out.sequences[0, len(prompt) :].tolist(), trusted))
            cache[key] = results
        return cache[key]

    return reference


@pytest.fixture
def greedy() -> Callable[..., SamplingParams]:
    def params(max_tokens: int = 24, **kw: object) -> SamplingParams:
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)  # type: ignore[arg-type]

    return params
