from __future__ import annotations

import pytest

from nereid.backends.llm import EngineConfig, SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.1}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"logprobs": -1}, "logprobs"),
        ({"n": 0}, "n must"),
        ({"stop": [""]}, "stop strings"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_invalid_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_defaults_and_normalisation():
    p = SamplingParams(stop="###", temperature=0.0)
    assert p.stop == ["###"] and p.greedy and not p.has_penalties
    assert SamplingParams(top_k=1, top_p=1.0, min_p=0.0, max_tokens=None).max_tokens is None
    assert SamplingParams(repetition_penalty=1.2).has_penalties


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 0}, "block_size"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_seqs": 8, "max_num_batched_tokens": 4}, "max_num_batched_tokens"),
        ({"kv_cache_memory_fraction": 0.0}, "kv_cache_memory_fraction"),
        ({"kv_cache_bytes": 0}, "kv_cache_bytes"),
        ({"num_kv_blocks": 0}, "num_kv_blocks"),
        ({"dtype": "int8"}, "dtype"),
        ({"device": "nonsense"}, "device"),
        ({"max_model_len": 1}, "max_model_len"),
        (
            {"enable_chunked_prefill": False, "max_model_len": 512, "max_num_batched_tokens": 256},
            "chunked prefill",
        ),
    ],
)
def test_engine_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model="unused", **kwargs)
