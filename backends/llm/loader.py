"""Load a model and its tokenizer from a Hugging Face layout directory or a GGUF file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from nereid.backends.llm import prepack
from nereid.backends.llm.config import CheckpointConfig, EngineConfig
from nereid.backends.llm.gguf_loader import GGUFCheckpoint
from nereid.backends.llm.models.llama import PACKED, LlamaForCausalLM, rope_inv_freq
from nereid.backends.llm.quant import quantize
from nereid.backends.llm.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    config: CheckpointConfig
    tokenizer: Tokenizer


def load(config: EngineConfig) -> LoadedModel:
    """Build the model on `config.device` in `config.torch_dtype()`, plus its tokenizer.

    Raises ValueError for a missing path, an unsupported architecture or a checkpoint that does not match.
    """
    path = Path(config.model)
    dtype, device = config.torch_dtype(), torch.device(config.device)
    if path.is_file() and path.suffix == ".gguf":
        ckpt = GGUFCheckpoint(path)
        model_cfg = ckpt.checkpoint_config()
        model = build_model(model_cfg, ckpt.tensors(), dtype, device)
        tokenizer = Tokenizer.from_dir(Path(config.tokenizer)) if config.tokenizer else ckpt.tokenizer()
    elif path.is_dir() and (path / "config.json").is_file():
        model_cfg = hf_checkpoint_config(path)
        model = build_model(model_cfg, safetensors_tensors(path), dtype, device)
        tokenizer = Tokenizer.from_dir(Path(config.tokenizer or path))
    else:
        raise ValueError(f"{path}: expected a directory with config.json or a .gguf file")
    model = quantize(model, config.weights)
    if config.weights == "float" and not config.compile:  # compiled: Inductor's freezing packs them itself
        model = prepack.pack(model)  # bfloat16 on CPU: oneDNN weights reordered once
    eos = list(dict.fromkeys([*model_cfg.eos_token_ids, *tokenizer.eos_token_ids]))
    model_cfg.eos_token_ids = tokenizer.eos_token_ids = eos
    return LoadedModel(model, model_cfg, tokenizer)


def hf_checkpoint_config(path: Path) -> CheckpointConfig:
    cfg = json.loads((path / "config.json").read_text())
    gen_path = path / "generation_config.json"
    if gen_path.is_file():
        gen = json.loads(gen_path.read_text())
        if gen.get("eos_token_id") is not None:
            cfg["eos_token_id"] = gen["eos_token_id"]
    return CheckpointConfig.from_hf(cfg)


def safetensors_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors files")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)


def build_model(
    cfg: CheckpointConfig,
    tensors: Iterator[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device,
) -> LlamaForCausalLM:
    """Create the model without initialising weights, then assign the checkpoint tensors."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    state = {}
    for name, tensor in tensors:
        if name.endswith("rotary_emb.inv_freq") or (cfg.tie_word_embeddings and name == "lm_head.weight"):
            continue
        state[name] = tensor.to(device=device, dtype=dtype)
    pack(state, cfg.num_hidden_layers)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.inv_freq = rope_inv_freq(cfg).to(device)
    return model.eval()


def pack(state: dict[str, torch.Tensor], num_layers: int) -> None:
    """Stack each layer's checkpoint tensors into the model's fused projections (`PACKED`), in place.
    A layer missing one of the parts is left alone, so the caller reports the missing tensor."""
    for i in range(num_layers):
        for fused, parts in PACKED.items():
            for kind in ("weight", "bias"):
                names = [f"model.layers.{i}.{part}.{kind}" for part in parts]
                if all(name in state for name in names):
                    state[f"model.layers.{i}.{fused}.{kind}"] = torch.cat([state.pop(n) for n in names])
