"""One real server for the hardening tests, and raw clients that can send what real clients never do.

The server runs in explicit model-control mode (so load requests are allowed) with a short
header deadline; its repository sits next to a folder of files a load request must never
reach (``outside``), among them a ``model.py`` that leaves a marker file when imported.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from nereid.proto import grpc_service_pb2 as pb

HEADER_TIMEOUT = 1.0
SERVICE = "/inference.GRPCInferenceService/"

EVIL_MODEL = """
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("the server imported a file outside its repository")

class TritonPythonModel:
    def execute(self, requests):
        return []
"""


@dataclass
class Hardened:
    """The server's addresses and the paths the tests aim at."""

    http_url: str
    grpc_url: str
    root: Path
    outside: Path

    header_timeout = HEADER_TIMEOUT

    @staticmethod
    def add_sub_request(**overrides: Any) -> dict[str, Any]:
        return add_sub_request(**overrides)

    @staticmethod
    def add_sub_message(request_id: str = "") -> pb.ModelInferRequest:
        return add_sub_message(request_id)

    @property
    def marker(self) -> Path:
        return self.outside / "1" / "IMPORTED"

    # ---- HTTP ----------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        host, port = self.http_url.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        try:
            decoded = json.loads(payload) if payload else {}
        except ValueError:
            decoded = {"raw": payload.decode("latin-1")}
        return response.status, decoded

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request("POST", path, raw, headers)

    def raw_socket(self) -> socket.socket:
        host, port = self.http_url.split(":")
        sock = socket.create_connection((host, int(port)))
        sock.settimeout(HEADER_TIMEOUT * 5)
        return sock

    def assert_http_serving(self) -> None:
        status, payload = self.post("/v2/models/add_sub/infer", add_sub_request())
        assert status == 200, payload
        assert payload["outputs"][0]["data"] == [2.0 * i for i in range(16)]

    # ---- gRPC ----------------------------------------------------------------------------------

    def unary_raw(self, method: str, raw: bytes) -> bytes:
        """Call ``method`` with ``raw`` as the request message's bytes."""
        with grpc.insecure_channel(self.grpc_url) as channel:
            call = channel.unary_unary(SERVICE + method)
            return call(raw, timeout=30)

    def stream_raw(self, messages: list[bytes]) -> list[pb.ModelStreamInferResponse]:
        """Send ``messages`` on one ModelStreamInfer call and collect every response until it ends."""
        with grpc.insecure_channel(self.grpc_url) as channel:
            call = channel.stream_stream(
                SERVICE + "ModelStreamInfer", response_deserializer=pb.ModelStreamInferResponse.FromString
            )
            return list(call(iter(messages), timeout=30))

    def assert_grpc_serving(self) -> None:
        response = pb.ModelInferResponse.FromString(
            self.unary_raw("ModelInfer", add_sub_message().SerializeToString())
        )
        assert response.model_name == "add_sub" and len(response.raw_output_contents) == 2

    def assert_serving(self) -> None:
        self.assert_http_serving()
        self.assert_grpc_serving()


def add_sub_request(**overrides: Any) -> dict[str, Any]:
    tensor = {"shape": [1, 16], "datatype": "FP32", "data": list(range(16))}
    body: dict[str, Any] = {"inputs": [{"name": "INPUT0", **tensor}, {"name": "INPUT1", **tensor}]}
    body.update(overrides)
    return body


def add_sub_message(request_id: str = "") -> pb.ModelInferRequest:
    import numpy as np

    msg = pb.ModelInferRequest(model_name="add_sub", id=request_id)
    for name in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        msg.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return msg


@pytest.fixture(scope="module")
def hardened(module_repo, start_module_server) -> Iterator[Hardened]:
    module_repo.add_sub()
    module_repo.identity("bytes_id", "BYTES", max_batch_size=0)
    # A Python model folder; load requests aim its config at files outside the repository.
    module_repo.config("pymodel", 'backend: "python"\nmax_batch_size: 0\n')
    outside = module_repo.root.parent / "outside"
    (outside / "1").mkdir(parents=True, exist_ok=True)
    (outside / "1" / "model.py").write_text(EVIL_MODEL)
    running = start_module_server(
        module_repo.root,
        model_control_mode="explicit",
        load_model=["add_sub", "bytes_id"],
        http_max_input_size=16 * 1024 * 1024,
        http_header_timeout_secs=HEADER_TIMEOUT,
    )
    yield Hardened(running.http_url, running.grpc_url, module_repo.root, outside)
