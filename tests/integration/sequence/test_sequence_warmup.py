"""Warmup of a stateful model goes straight to its instances: sequences start from clean state."""

from __future__ import annotations


def test_sequences_after_warmup_start_from_empty_state(client):
    assert client.client.is_model_ready("onnx_warm")
    for seq in (7001, 7002):
        assert client.total("onnx_warm", 5.0, sequence_id=seq, sequence_start=True) == 5.0
        assert client.total("onnx_warm", 2.0, sequence_id=seq) == 7.0
        assert client.total("onnx_warm", 1.0, sequence_id=seq, sequence_end=True) == 8.0
