"""--log-format json (one object a line, with request and trace ids) and the optional access log."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from nereid.server import logs

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}


@pytest.fixture
def captured() -> Any:
    """The root logger writing JSON into a buffer for one test, then restored."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    logs.configure("json", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _access_records(captured: io.StringIO, done: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The access-log records, waiting (up to ``timeout``) until ``done(records)``: the server logs
    a call when its handler ends, which may be just after the client has the answer."""
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for line in captured.getvalue().splitlines()]
        access = [r for r in records if r["logger"] == "nereid.access"]
        if done(access) or time.monotonic() > deadline:
            return access
        time.sleep(0.02)


def test_access_log_lines_are_json_with_ids(repo, start_server, captured):
    repo.identity("identity")
    server = start_server(repo.root, log_access=True, trace_config=["level=TIMESTAMPS", "rate=1"])
    url = f"http://{server.http_url}/v2/models/identity/infer"
    response = httpx.post(url, json=BODY, headers={"x-request-id": "req-42", "traceparent": TRACEPARENT})
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-42"
    httpx.get(f"http://{server.http_url}/v2/models/missing")
    access = _access_records(captured, lambda records: any(r.get("model") == "missing" for r in records))
    infer = next(r for r in access if r["path"].endswith("/infer"))
    assert set(infer) >= {"time", "level", "logger", "message", "model", "version", "request_id", "trace_id"}
    assert infer["model"] == "identity" and infer["request_id"] == "req-42" and infer["status"] == 200
    assert infer["trace_id"] == TRACEPARENT.split("-")[1] and infer["level"] == "INFO"
    assert infer["time"].endswith("+00:00")
    assert any(r["status"] == 404 and r["model"] == "missing" for r in access)


def test_grpc_calls_are_access_logged_with_their_status(repo, start_server, captured):
    repo.identity("identity")
    server = start_server(repo.root, log_access=True)
    data = np.array(BODY["inputs"][0]["data"], dtype=np.float32).reshape(BODY["inputs"][0]["shape"])
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        client.infer("identity", [tensor], headers={"x-request-id": "grpc-7", "traceparent": TRACEPARENT})
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("missing")

    def grpc(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r["protocol"] == "grpc"]

    access = grpc(_access_records(captured, lambda records: len(grpc(records)) >= 2))
    infer = next(r for r in access if r["path"].endswith("/ModelInfer"))
    assert infer["status"] == "OK" and infer["request_id"] == "grpc-7"
    assert infer["trace_id"] == TRACEPARENT.split("-")[1]
    assert any(r["path"].endswith("/ModelMetadata") and r["status"] == "NOT_FOUND" for r in access), access


def test_access_log_is_off_by_default(repo, start_server, captured):
    repo.identity("identity")
    server = start_server(repo.root)
    httpx.post(f"http://{server.http_url}/v2/models/identity/infer", json=BODY)
    assert '"nereid.access"' not in captured.getvalue()


def test_text_format_escapes_a_forged_record():
    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logs.configure("text", stream=buffer)
        logging.getLogger("nereid.test").info("model 'x\nE0101 forged line'")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    assert buffer.getvalue().count("\n") == 1 and "\\nE0101" in buffer.getvalue()


def test_serve_flag_writes_json_lines(repo, tmp_path):
    """The real command line: ``nereid serve --log-format json`` logs start-up as JSON objects."""
    repo.identity("identity")
    command = [sys.executable, "-m", "nereid.server.cli", "serve", "--model-repository", str(repo.root),
               "--http-address", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
               "--log-format", "json"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()  # type: ignore[union-attr]
        record = json.loads(line)
        assert record["level"] == "INFO" and "message" in record and "trace_id" in record
    finally:
        process.terminate()
        process.wait(30)


def test_bad_log_format_is_refused(repo):
    command = [sys.executable, "-m", "nereid.server.cli", "serve", "--model-repository", str(repo.root),
               "--log-format", "xml"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--log-format" in result.stderr
