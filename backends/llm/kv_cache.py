"""The physical KV cache: one tensor [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]."""

from __future__ import annotations

import os

import torch

from nereid.backends.llm.config import CheckpointConfig, EngineConfig


def block_bytes(model: CheckpointConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, keys and values."""
    elem = torch.empty((), dtype=dtype).element_size()
    return model.num_hidden_layers * 2 * block_size * model.num_key_value_heads * model.head_dim * elem


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on the device: CUDA's own count, or MemAvailable from /proc/meminfo on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def num_kv_blocks(config: EngineConfig, model: CheckpointConfig, dtype: torch.dtype) -> int:
    """Blocks to allocate: `num_kv_blocks`, else bytes (or a fraction of free memory) / block bytes.

    Sized caches are capped at what `max_num_seqs` sequences of `max_model_len` tokens could ever use.
    Raises ValueError if the cache cannot hold one sequence of `max_model_len` tokens.
    """
    if config.max_model_len is None:
        raise ValueError("max_model_len must be resolved before sizing the KV cache")
    per_seq = -(-config.max_model_len // config.block_size)
    if config.num_kv_blocks is not None:
        blocks = config.num_kv_blocks
    else:
        budget = config.kv_cache_bytes
        if budget is None:
            budget = int(free_memory_bytes(torch.device(config.device)) * config.kv_cache_memory_fraction)
        blocks = min(budget // block_bytes(model, config.block_size, dtype), per_seq * config.max_num_seqs)
    if blocks < per_seq:
        raise ValueError(
            f"KV cache of {blocks} blocks x {config.block_size} tokens cannot hold one sequence of "
            f"max_model_len {config.max_model_len} tokens; enlarge the cache or lower max_model_len"
        )
    return blocks


def allocate_kv_cache(
    model: CheckpointConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    shape = (model.num_hidden_layers, 2, num_blocks, block_size, model.num_key_value_heads, model.head_dim)
    return torch.zeros(shape, dtype=dtype, device=device)
