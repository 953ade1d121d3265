"""Warmup of a decoupled Python model: the load waits for every warmup request's final response."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nereid.server.types import InferRequest, Tensor

# Two responses 150 ms apart per warmup request, sent from the model's own thread after execute returns.
WARMUP = """
model_warmup [ { name: "slow_stream" batch_size: 1 count: 2 inputs [
  { key: "IN" value: { data_type: TYPE_INT32 dims: [ 2 ] zero_data: true } },
  { key: "DELAY" value: { data_type: TYPE_UINT32 dims: [ 2 ] input_data_file: "delay.bin" } },
  { key: "WAIT" value: { data_type: TYPE_UINT32 dims: [ 1 ] zero_data: true } }
] } ]
"""


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_decoupled_warmup_waits_for_the_final_response(py_repo, start_server, isolation):
    extra = WARMUP
    if isolation == "none":
        extra += 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'
    folder = py_repo.repeat(extra=extra)
    (folder / "warmup").mkdir()
    (folder / "warmup" / "delay.bin").write_bytes(np.array([150, 150], "<u4").tobytes())
    started = time.monotonic()
    running = start_server(py_repo.root)
    assert time.monotonic() - started >= 2 * 0.3  # count 2 x two 150 ms responses, before READY
    assert running.core.model_ready("repeat")
    request = InferRequest(
        "repeat",
        [
            Tensor("IN", "INT32", (2,), np.array([4, 2], np.int32)),
            Tensor("DELAY", "UINT32", (2,), np.zeros(2, np.uint32)),
            Tensor("WAIT", "UINT32", (1,), np.zeros(1, np.uint32)),
        ],
    )

    async def collect() -> list:
        return [r async for r in running.core.stream(request)]

    values = [int(r.output("OUT").data[0]) for r in running.call(collect()) if r.outputs]
    assert values == [4, 2]
