"""GGUF checkpoints (llama.cpp format): metadata → CheckpointConfig, dequantised tensors with Hugging Face names,
and the byte-level BPE tokenizer stored in `tokenizer.ggml.*`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from nereid.backends.llm.config import CheckpointConfig
from nereid.backends.llm.tokenizer import Tokenizer, byte_level_bpe

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_CONTROL, _USER_DEFINED = 3, 4


def hf_name(name: str) -> str | None:
    """`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; None for tensors we do not use."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    base, _, kind = name.rpartition(".")
    return f"{_GLOBAL_NAMES[base]}.{kind}" if base in _GLOBAL_NAMES else None


def unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (interleaved rotary pairs back to Hugging Face's halves)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """Supports architectures `llama` and `qwen2` with any tensor type `gguf.quants.dequantize` knows."""

    def __init__(self, path: Path) -> None:
        self.reader = GGUFReader(str(path))
        self.arch = self.field("general.architecture")
        if self.arch not in ("llama", "qwen2"):
            raise ValueError(f"{path}: unsupported GGUF architecture {self.arch!r} (supported: llama, qwen2)")
        self.names = {t.name for t in self.reader.tensors}

    def field(self, key: str, default: Any = None) -> Any:
        f = self.reader.get_field(key)
        if f is None:
            return default
        return f.contents()

    def checkpoint_config(self) -> CheckpointConfig:
        a = self.arch
        heads = self.field(f"{a}.attention.head_count")
        hidden = self.field(f"{a}.embedding_length")
        eos = [self.field(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
        rope = None
        if self.field(f"{a}.rope.scaling.type") == "linear":
            rope = {"rope_type": "linear", "factor": self.field(f"{a}.rope.scaling.factor")}
        if "rope_freqs.weight" in self.names:
            t = next(t for t in self.reader.tensors if t.name == "rope_freqs.weight")
            rope = {"rope_type": "freq_factors", "factors": np.asarray(t.data, dtype=np.float32).tolist()}
        return CheckpointConfig(
            vocab_size=self.field(f"{a}.vocab_size") or len(self.field("tokenizer.ggml.tokens")),
            hidden_size=hidden,
            intermediate_size=self.field(f"{a}.feed_forward_length"),
            num_hidden_layers=self.field(f"{a}.block_count"),
            num_attention_heads=heads,
            num_key_value_heads=self.field(f"{a}.attention.head_count_kv", heads),
            head_dim=self.field(f"{a}.attention.key_length", hidden // heads),
            max_position_embeddings=self.field(f"{a}.context_length", 2048),
            rms_norm_eps=self.field(f"{a}.attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta=self.field(f"{a}.rope.freq_base", 10000.0),
            rope_scaling=rope,
            tie_word_embeddings="output.weight" not in self.names,
            qkv_bias="blk.0.attn_q.bias" in self.names,
            o_bias="blk.0.attn_output.bias" in self.names,
            eos_token_ids=list(dict.fromkeys(e for e in eos if e is not None)),
            bos_token_id=self.field("tokenizer.ggml.bos_token_id"),
        )

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Dequantised float32 tensors under Hugging Face names, Q/K rows un-permuted for `llama`."""
        cfg = self.checkpoint_config()
        for t in self.reader.tensors:
            name = hf_name(t.name)
            if name is None:
                continue
            w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))  # copy: mmap
            if self.arch == "llama" and ".q_proj." in name:
                w = unpermute_rotary(w, cfg.num_attention_heads)
            elif self.arch == "llama" and ".k_proj." in name:
                w = unpermute_rotary(w, cfg.num_key_value_heads)
            yield name, w

    def tokenizer(self) -> Tokenizer:
        if self.field("tokenizer.ggml.model") != "gpt2":
            raise ValueError(
                f"unsupported GGUF tokenizer {self.field('tokenizer.ggml.model')!r} (supported: gpt2)"
            )
        tokens: list[str] = self.field("tokenizer.ggml.tokens")
        merges: list[str] = self.field("tokenizer.ggml.merges")
        types: list[int] = self.field("tokenizer.ggml.token_type") or [1] * len(tokens)
        special = [i for i, kind in enumerate(types) if kind == _CONTROL]
        user = [i for i, kind in enumerate(types) if kind == _USER_DEFINED]
        bos_id, eos_id = self.field("tokenizer.ggml.bos_token_id"), self.field("tokenizer.ggml.eos_token_id")
        add_bos = bool(self.field("tokenizer.ggml.add_bos_token", False))
        tok = byte_level_bpe(
            tokens,
            merges,
            special,
            user,
            pre=self.field("tokenizer.ggml.pre", "default"),
            bos_id=bos_id if add_bos else None,
        )
        return Tokenizer(
            tok,
            bos_token=tokens[bos_id] if bos_id is not None else None,
            eos_token=tokens[eos_id] if eos_id is not None else None,
            eos_token_ids=self.checkpoint_config().eos_token_ids,
            chat_template=self.field("tokenizer.chat_template"),
        )
