"""``preserve_ordering``: with two instances, a slow first request still answers first."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

SLEEP_MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            time.sleep(float(x.reshape(-1)[0]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("Y", x)]))
        return responses
"""


def _model(root: Path, name: str, ordered: bool) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(SLEEP_MODEL)
    (root / name / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""
            backend: "python"
            max_batch_size: 1
            input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
            output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
            instance_group [ {{ kind: KIND_CPU count: 2 }} ]
            dynamic_batching {{ preserve_ordering: {str(ordered).lower()} }}
            """
        )
    )


@pytest.mark.parametrize("ordered", [True, False])
def test_a_fast_request_waits_for_an_earlier_slow_one(tmp_path: Path, start_server, ordered: bool) -> None:
    """Two instances: "slow" (1 s) runs on one, "fast" (sent 0.2 s later) on the other."""
    _model(tmp_path, "sleepy", ordered)
    running = start_server(tmp_path)

    def call(seconds: float) -> float:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        x = grpcclient.InferInput("X", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[seconds]], dtype=np.float32))
        began = time.monotonic()
        client.infer("sleepy", [x])
        return time.monotonic() - began

    slow = threading.Thread(target=call, args=(1.0,))
    slow.start()
    time.sleep(0.2)
    fast = call(0.0)
    slow.join()
    if ordered:
        assert fast > 0.6  # held until the slow one's answer left
    else:
        assert fast < 0.5
