"""``instance_group.passive``: passive instances load but the scheduler gives them no requests."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

WHO_MODEL = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        time.sleep(0.05)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("WHO", np.array([self.name], dtype=object))])
            for _ in requests
        ]
"""


def _write(root: Path, groups: str) -> None:
    (root / "who" / "1").mkdir(parents=True)
    (root / "who" / "1" / "model.py").write_text(WHO_MODEL)
    (root / "who" / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""
            backend: "python"
            input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
            output [ {{ name: "WHO" data_type: TYPE_STRING dims: [ 1 ] }} ]
            instance_group [ {groups} ]
            """
        )
    )


def test_passive_instances_get_no_requests(tmp_path: Path, start_server) -> None:
    _write(
        tmp_path,
        '{ name: "active" kind: KIND_CPU count: 1 }, { name: "standby" kind: KIND_CPU count: 2 passive: true }',
    )
    running = start_server(tmp_path)
    seen: list[str] = []

    def call(module, url: str) -> None:
        x = module.InferInput("X", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        seen.append(module.InferenceServerClient(url).infer("who", [x]).as_numpy("WHO")[0].decode())

    threads = [
        threading.Thread(target=call, args=(module, url))
        for module, url in ((httpclient, running.http_url), (grpcclient, running.grpc_url))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and {name.split("_")[0] for name in seen} == {"active"}, seen


def test_a_model_with_only_passive_instances_fails_the_load(tmp_path: Path, start_server) -> None:
    _write(tmp_path, "{ kind: KIND_CPU passive: true }")
    running = start_server(tmp_path, model_control_mode="explicit")
    for module, url in ((httpclient, running.http_url), (grpcclient, running.grpc_url)):
        with pytest.raises(InferenceServerException) as info:
            module.InferenceServerClient(url).load_model("who")
        assert "every instance_group is 'passive'" in str(info.value)
