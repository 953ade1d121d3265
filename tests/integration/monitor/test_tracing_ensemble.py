"""An ensemble request's trace: each step is a child request span with its own stages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

TRACE_ID = 0x5EC0_0000_0000_0000_0000_0000_0000_0001
TRACEPARENT = f"00-{TRACE_ID:032x}-00f067aa0ba902b7-01"

CHAIN = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [
  { model_name: "first" model_version: -1 input_map { key: "INPUT0" value: "IN" } output_map { key: "OUTPUT0" value: "mid" } },
  { model_name: "second" model_version: -1 input_map { key: "INPUT0" value: "mid" } output_map { key: "OUTPUT0" value: "OUT" } }
] }
"""


@pytest.fixture
def chain(repo: Any, start_server: Any) -> Any:
    repo.identity("first")
    repo.identity("second")
    repo.config("chain", CHAIN)
    return start_server(repo.root, trace_config=["level=TIMESTAMPS", "rate=1"])


def test_each_ensemble_step_is_a_child_span_of_the_ensemble_request(chain: Any, spans_of: Any) -> None:
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensor = httpclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    with httpclient.InferenceServerClient(chain.http_url) as client:
        result = client.infer("chain", [tensor], headers={"traceparent": TRACEPARENT})
    assert np.array_equal(result.as_numpy("OUT"), data)
    spans = spans_of(chain, TRACE_ID)
    roots = {s.attributes["nereid.model"]: s for s in spans if s.name == "infer"}
    assert set(roots) == {"chain", "first", "second"}
    ensemble = roots["chain"]
    for step in ("first", "second"):
        assert roots[step].parent.span_id == ensemble.context.span_id
        children = {
            s.name for s in spans if s.parent is not None and s.parent.span_id == roots[step].context.span_id
        }
        assert "queue" in children, (step, children)
