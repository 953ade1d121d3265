"""``POST .../infer`` answered by the connection itself (server/http/fast.py): the same bytes as the
ASGI route, pipelining in order, keep-alive, and every request it hands back to the ASGI app.

A path with a percent escape (``/v2/models/add_sub/%69nfer``) always takes the ASGI route, so each
case is sent both ways and the two responses must match, headers included (but ``date``).
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

FAST = "/v2/models/{model}/infer"
ASGI = "/v2/models/{model}/%69nfer"  # decodes to .../infer, through the app's router

SLOW_MODEL = """
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.3)
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests]
"""


def json_body(value: float = 1.0, model_input: str = "INPUT0") -> bytes:
    data = [value] * 16
    inputs = [
        {"name": model_input, "shape": [1, 16], "datatype": "FP32", "data": data},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": data},
    ]
    return json.dumps({"inputs": inputs}).encode()


def binary_body() -> tuple[bytes, int]:
    """add_sub's inputs as binary tensors, both outputs asked for as binary: (body, JSON length)."""
    header = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}
            for n in ("INPUT0", "INPUT1")
        ],
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in ("OUTPUT0", "OUTPUT1")],
    }
    head = json.dumps(header).encode()
    raw = np.arange(16, dtype=np.float32).tobytes()
    return head + raw + raw, len(head)


def request(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: x", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (bytes past it stay in ``buffer``): status, headers, body."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))  # 0 for "100 Continue"
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        rest += chunk
    buffer[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def exchange(url: str, *raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` requests (pipelined, one write) on one connection; their responses in order."""
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"".join(raw))
        buffer = bytearray()
        return [read_response(sock, buffer) for _ in raw]


def without_date(response: tuple[int, dict[str, str], bytes]) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = response
    return status, {k: v for k, v in headers.items() if k != "date"}, body


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    module_repo.add_sub()
    folder = module_repo.config(
        "slow",
        """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }
""",
    )
    (folder / "1" / "model.py").write_text(SLOW_MODEL)
    return start_module_server(module_repo.root, http_max_input_size=4096)


BINARY, BINARY_JSON = binary_body()
CASES = {
    "json": (json_body(), ()),
    "binary": (BINARY, (f"Inference-Header-Content-Length: {BINARY_JSON}",)),
    "request_id": (json_body(), ("X-Request-ID: abc-123",)),
    "bad_json": (b'{"inputs": [', ()),
    "wrong_input": (json_body(model_input="NOPE"), ()),
    "bad_header_length": (BINARY, ("Inference-Header-Content-Length: x",)),
    "header_length_past_body": (BINARY, ("Inference-Header-Content-Length: 99999",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_connection_answers_as_the_asgi_route_does(server, case):
    body, headers = CASES[case]
    fast, routed = exchange(
        server.http_url,
        request(FAST.format(model="add_sub"), body, *headers),
        request(ASGI.format(model="add_sub"), body, *headers),
    )
    assert without_date(fast) == without_date(routed)
    status, reply_headers, reply = fast
    if case in ("json", "binary", "request_id"):
        assert status == 200
        assert "date" in reply_headers
    else:
        assert status == 400 and "error" in json.loads(reply)
    if case == "binary":
        assert reply_headers["content-type"] == "application/octet-stream"
        assert int(reply_headers["inference-header-content-length"]) < len(reply)
    if case == "request_id":
        assert reply_headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize("path", ["/v2/models/missing/", "/v2/models/add_sub/versions/7/"])
def test_unknown_models_and_versions_are_refused_alike(server, path):
    fast, routed = exchange(
        server.http_url, request(path + "infer", json_body()), request(path + "%69nfer", json_body())
    )
    assert without_date(fast) == without_date(routed)
    status, _, body = fast
    # Triton's mapping (server/http/errors.py): a model or version the server does not have.
    assert status in (400, 404) and set(json.loads(body)) == {"error"}


def test_pipelined_requests_are_answered_in_order_across_both_paths(server):
    bodies = [json_body(float(i)) for i in range(4)]
    replies = exchange(
        server.http_url,
        request(FAST.format(model="add_sub"), bodies[0]),
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n",
        request(FAST.format(model="add_sub"), b"not json"),
        request(ASGI.format(model="add_sub"), bodies[2]),
        request(FAST.format(model="add_sub"), bodies[3]),
    )
    assert [status for status, _, _ in replies] == [200, 200, 400, 200, 200]
    sums = [json.loads(replies[i][2])["outputs"][0]["data"][0] for i in (0, 3, 4)]
    assert sums == [0.0, 4.0, 6.0]


def test_a_body_in_pieces_and_a_pipelined_request_behind_a_slow_one(server):
    host, port = server.http_url.split(":")
    slow = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [5, 6]}]})
    second = request(FAST.format(model="add_sub"), json_body(2.0))
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request(FAST.format(model="slow"), slow.encode()) + second[:40])
        time.sleep(0.05)
        sock.sendall(second[40:-10])
        time.sleep(0.05)
        sock.sendall(second[-10:])
        buffer = bytearray()
        first, after = read_response(sock, buffer), read_response(sock, buffer)
    assert first[0] == 200 and json.loads(first[2])["outputs"][0]["data"] == [5, 6]
    assert after[0] == 200 and json.loads(after[2])["outputs"][0]["data"][0] == 4.0


def test_keep_alive_and_connection_close(server):
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        buffer = bytearray()
        for i in range(3):  # one connection, three requests
            sock.sendall(request(FAST.format(model="add_sub"), json_body(float(i))))
            status, headers, _ = read_response(sock, buffer)
            assert status == 200 and "connection" not in headers
        sock.sendall(request(FAST.format(model="add_sub"), json_body(), "Connection: close"))
        status, headers, _ = read_response(sock, buffer)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(100) == b""  # the server closed it


def test_tritonclient_over_one_kept_alive_connection(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=1)
    for i in range(20):
        a = np.full((1, 16), i, dtype=np.float32)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(a, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("OUTPUT0", "OUTPUT1")]
        result = client.infer("add_sub", inputs, outputs=outputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a)
    with pytest.raises(InferenceServerException, match="missing"):
        client.infer("missing", inputs)
    client.close()


def test_same_errors_over_grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="missing"):
        client.infer("missing", inputs)
    assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").shape == (1, 16)


def test_requests_the_connection_leaves_to_the_app_still_work(server):
    body = json_body(3.0)
    path = FAST.format(model="add_sub")
    chunked = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    replies = exchange(
        server.http_url,
        request(path, gzip.compress(body), "Content-Encoding: gzip"),
        chunked,
        request(path, b"x" * 5000),  # over http_max_input_size: the app refuses it
        request(path, body, "Expect: 100-continue"),
        b"",  # the 100 Continue comes first
    )
    assert [status for status, _, _ in replies] == [200, 200, 413, 100, 200]
    assert "exceeds" in json.loads(replies[2][2])["error"]
    ((status, _, reply),) = exchange(server.http_url, request(path, body, version="1.0"))
    assert status == 200 and json.loads(reply)["outputs"][0]["data"][0] == 6.0


def test_a_client_that_leaves_cancels_its_request_and_the_server_keeps_serving(server):
    host, port = server.http_url.split(":")
    slow = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]})
    socks = []
    for _ in range(3):  # one runs, two wait in the queue and are dropped when their clients leave
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(request(FAST.format(model="slow"), slow.encode()))
        socks.append(sock)
    time.sleep(0.1)
    for sock in socks:
        sock.close()
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(
            exchange(server.http_url, request(FAST.format(model="slow"), slow.encode()))[0][0]
        )
    )
    thread.start()
    thread.join(30)
    assert results == [200]
