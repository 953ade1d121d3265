"""Triton's rate limiter: instances sharing a resource never run at once; bad configs fail the load."""

from __future__ import annotations

import itertools
import json
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

TIMED_MODEL = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        start = time.time()
        time.sleep(0.3)
        end = time.time()
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("SPAN", np.array([start, end], dtype=np.float64))]
            )
            for _ in requests
        ]
"""


def _timed_config(resources: str) -> str:
    return textwrap.dedent(
        f"""
        backend: "python"
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "SPAN" data_type: TYPE_FP64 dims: [ 2 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: 1 rate_limiter {{ {resources} }} }} ]
        """
    )


def _write(root: Path, name: str, resources: str) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "1" / "model.py").write_text(TIMED_MODEL)
    (root / name / "config.pbtxt").write_text(_timed_config(resources))


SHARED = 'resources [ { name: "R" global: true count: 1 } ] priority: 1'


def _spans(url: str) -> list[tuple[float, float]]:
    """Run model a and b twice each, all at once; the (start, end) of each execution."""
    spans: list[tuple[float, float]] = []

    def call(model: str) -> None:
        client = httpclient.InferenceServerClient(url)
        x = httpclient.InferInput("X", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        start, end = client.infer(model, [x]).as_numpy("SPAN").tolist()
        spans.append((start, end))

    threads = [threading.Thread(target=call, args=(m,)) for m in ("a", "b", "a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(spans)


def _overlaps(spans: list[tuple[float, float]]) -> bool:
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


@pytest.mark.parametrize("mode", ["execution_count", "off"])
def test_a_shared_global_resource_serialises_two_models(
    tmp_path: Path, start_server, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a", "b"):
        _write(tmp_path, name, SHARED)
    running = start_server(tmp_path, rate_limit=mode)
    spans = _spans(running.http_url)
    assert len(spans) == 4
    assert _overlaps(spans) is (mode == "off"), spans
    # Off, the rate_limiter config is ignored as in Triton, but not silently.
    assert ("not acted on while --rate-limit is off" in caplog.text) is (mode == "off")


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ('resources [ { name: "R" count: 3 } ]', "count 3 is more than the 2 the server declares"),
        ("resources [ { count: 1 } ]", "'name' is required"),
        ('resources [ { name: "G" count: 1 }, { name: "G" count: 2 } ]', "listed twice"),
        ('resources [ { name: "R" count: -1 } ]', "count"),
    ],
)
def test_bad_rate_limiter_configs_fail_the_load_over_both_transports(
    tmp_path: Path, start_server, resources: str, fragment: str
) -> None:
    _write(tmp_path, "ok", 'resources [ { name: "R" count: 1 } ]')
    running = start_server(
        tmp_path, rate_limit="execution_count", rate_limit_resource=["R:2"], model_control_mode="explicit"
    )
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.py").write_text(TIMED_MODEL)
    (tmp_path / "bad" / "config.pbtxt").write_text(_timed_config(resources))
    for client in (
        httpclient.InferenceServerClient(running.http_url),
        grpcclient.InferenceServerClient(running.grpc_url),
    ):
        with pytest.raises(InferenceServerException) as info:
            client.load_model("bad")
        assert fragment in str(info.value)
        assert "rate_limiter" in str(info.value) or "count" in str(info.value)
        client.load_model("ok")  # the server keeps loading and serving
        assert client.is_model_ready("ok")


def test_resources_from_the_load_api_config_are_checked_too(tmp_path: Path, start_server) -> None:
    _write(tmp_path, "a", SHARED)
    running = start_server(
        tmp_path, rate_limit="execution_count", rate_limit_resource=["R:1"], model_control_mode="explicit"
    )
    config = {
        "backend": "python",
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "SPAN", "data_type": "TYPE_FP64", "dims": [2]}],
        "instance_group": [{"kind": "KIND_CPU", "rate_limiter": {"resources": [{"name": "R", "count": 5}]}}],
    }
    client = grpcclient.InferenceServerClient(running.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("a", config=json.dumps(config))
    assert "instance_group[0].rate_limiter.resources 'R'" in str(info.value)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
