"""The receive-stage catalogue over HTTP: each case is a 4xx naming the problem, fast, and the server keeps serving."""

from __future__ import annotations

import json
import struct
import threading
import time

import pytest

FP32 = {"shape": [1, 16], "datatype": "FP32", "data": list(range(16))}


def _with_input(**fields) -> dict:
    return {"inputs": [{"name": "INPUT0", **FP32, **fields}, {"name": "INPUT1", **FP32}]}


BAD_JSON = {
    "datatype is a list": (_with_input(datatype=["FP32"]), "unknown datatype"),
    "datatype is an object": (_with_input(datatype={"a": 1}), "unknown datatype"),
    "dimension of 2^63": (_with_input(shape=[2**63, 16]), "below 2^63"),
    "dimension of 2^64 with a zero": (_with_input(shape=[2**64, 0], data=[]), "below 2^63"),
    "65 dimensions": (_with_input(shape=[1] * 65, data=[1.0]), "more than 64"),
    "shape is a string": (_with_input(shape="1,16"), "list of integers"),
    "huge shape for little JSON data": (_with_input(shape=[2**40, 2**20]), "number of elements"),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_tensor_fields_are_400(hardened, case) -> None:
    body, message = BAD_JSON[case]
    status, payload = hardened.post("/v2/models/add_sub/infer", body)
    assert status == 400, payload
    assert message in payload["error"]
    hardened.assert_http_serving()


def _binary_bytes_request(count: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [count],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    return header, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("count", [2**27, 2**40])
def test_bytes_shape_is_refused_before_allocating(hardened, count) -> None:
    body, headers = _binary_bytes_request(count)
    assert len(body) < 130
    started = time.monotonic()
    status, payload = hardened.post("/v2/models/bytes_id/infer", body, headers)
    assert status == 400, payload
    assert time.monotonic() - started < 0.5
    hardened.assert_http_serving()


@pytest.mark.parametrize("value", ["²", "1²", "¹²", " ", "-1", "1e3", "9" * 30])
def test_inference_header_length_takes_ascii_digits_only(hardened, value) -> None:
    body = json.dumps(hardened.add_sub_request()).encode()
    status, payload = hardened.post(
        "/v2/models/add_sub/infer", body, {"Inference-Header-Content-Length": value}
    )
    assert status == 400, payload
    hardened.assert_http_serving()


@pytest.mark.parametrize("segment", ["%C2%B2", "%D9%A3", "1%C2%B2", "99999999999999999999999"])
def test_version_segment_takes_ascii_digits_only(hardened, segment) -> None:
    status, payload = hardened.post(
        f"/v2/models/add_sub/versions/{segment}/infer", hardened.add_sub_request()
    )
    assert status == 400, payload
    status, _ = hardened.request("GET", f"/v2/models/add_sub/versions/{segment}")
    assert status == 400


def test_content_length_with_a_non_ascii_digit_is_not_a_500(hardened) -> None:
    sock = hardened.raw_socket()
    sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n")
    reply = sock.recv(65536)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 4"), reply[:80]


def test_many_unknown_inputs_are_refused_without_stalling_others(hardened) -> None:
    inputs = [{"name": f"X{i}", "shape": [1], "datatype": "FP32", "data": [1.0]} for i in range(100_000)]
    body = json.dumps({"inputs": inputs}).encode()
    assert len(body) > 6_000_000
    latencies: list[float] = []

    def probe() -> None:
        for _ in range(5):
            started = time.monotonic()
            hardened.request("GET", "/v2/health/live")
            latencies.append(time.monotonic() - started)

    thread = threading.Thread(target=probe)
    started = time.monotonic()
    thread.start()
    status, payload = hardened.post("/v2/models/add_sub/infer", body)
    elapsed = time.monotonic() - started
    thread.join()
    # Refused from a brace count, before the JSON is parsed (which stalled everyone ~3 s).
    assert status == 400 and "objects" in payload["error"], payload
    # Loose bounds: the machine running the tests may be shared and busy.
    assert elapsed < 10.0
    assert max(latencies) < 5.0
    hardened.assert_http_serving()


def test_load_with_a_config_that_is_not_an_object_is_400(hardened) -> None:
    status, payload = hardened.post("/v2/repository/models/add_sub/load", {"parameters": {"config": "null"}})
    assert status < 500, payload  # null: no override
    for config in ("[]", "1", '"x"', '{"max_batch_size": "x"}'):
        status, payload = hardened.post(
            "/v2/repository/models/add_sub/load", {"parameters": {"config": config}}
        )
        assert status == 400, (config, payload)
    hardened.assert_http_serving()


def _escapes(hardened) -> dict[str, str]:
    model_py = hardened.outside / "1" / "model.py"
    return {
        "absolute": str(model_py),
        "dot-dot": "../../../outside/1/model.py",
        "dot-dot inside a name": "x/../../../../outside/1/model.py",
    }


@pytest.mark.parametrize("kind", ["absolute", "dot-dot", "dot-dot inside a name"])
def test_load_cannot_import_a_model_py_outside_the_repository(hardened, kind) -> None:
    filename = _escapes(hardened)[kind]
    config = json.dumps({"backend": "python", "default_model_filename": filename})
    status, payload = hardened.post("/v2/repository/models/pymodel/load", {"parameters": {"config": config}})
    assert status == 400, payload
    assert "default_model_filename" in payload["error"]
    assert not hardened.marker.exists()
    assert str(hardened.root.parent) not in payload["error"]
    hardened.assert_http_serving()


def test_load_cannot_read_an_onnx_file_outside_the_repository(hardened) -> None:
    outside_onnx = hardened.root / "add_sub" / "1" / "model.onnx"
    config = json.dumps({"platform": "onnxruntime_onnx", "default_model_filename": str(outside_onnx)})
    status, payload = hardened.post("/v2/repository/models/bytes_id/load", {"parameters": {"config": config}})
    assert status == 400, payload
    assert "default_model_filename" in payload["error"]
    hardened.assert_http_serving()


def test_a_symlink_out_of_the_model_folder_is_refused(hardened) -> None:
    link = hardened.root / "pymodel" / "1" / "linked.py"
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(hardened.outside / "1" / "model.py")
    config = json.dumps({"backend": "python", "default_model_filename": "linked.py"})
    status, payload = hardened.post("/v2/repository/models/pymodel/load", {"parameters": {"config": config}})
    assert status == 400, payload
    assert "outside the model folder" in payload["error"]
    assert not hardened.marker.exists()


@pytest.mark.parametrize(
    "config",
    [
        {
            "output": [
                {"name": "OUTPUT0", "data_type": "TYPE_STRING", "dims": [-1], "label_filename": "/etc/passwd"}
            ]
        },
        {"model_warmup": [{"name": "w", "inputs": {"INPUT0": {"input_data_file": "../../etc/passwd"}}}]},
        {"cc_model_filenames": {"8.0": "/etc/passwd"}},
    ],
)
def test_load_refuses_label_warmup_and_cc_files_outside(hardened, config) -> None:
    full = {"platform": "onnxruntime_onnx", **config}
    status, payload = hardened.post(
        "/v2/repository/models/bytes_id/load", {"parameters": {"config": json.dumps(full)}}
    )
    assert status == 400, payload
    assert next(iter(config)) in payload["error"]


def test_load_errors_show_no_server_paths(hardened) -> None:
    broken = hardened.root / "broken"
    (broken / "1").mkdir(parents=True, exist_ok=True)
    (broken / "config.pbtxt").write_text("max_batch_size: [[[")
    status, payload = hardened.post("/v2/repository/models/broken/load", {})
    assert status == 400, payload
    assert "broken/config.pbtxt" in payload["error"]
    assert str(hardened.root) not in payload["error"]
    _, index = hardened.post("/v2/repository/index", {})
    assert all(str(hardened.root) not in row.get("reason", "") for row in index)


def test_idle_and_half_sent_connections_are_closed(hardened) -> None:
    for opening in (b"", b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nX-Slow: "):
        sock = hardened.raw_socket()
        sock.sendall(opening)
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        sock.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
        assert time.monotonic() - started < hardened.header_timeout * 3


def test_a_kept_alive_connection_gets_the_header_deadline_per_request(hardened) -> None:
    """One timer per connection: a request that starts late still gets its full deadline, and a
    half-sent one after it is still refused."""
    sock = hardened.raw_socket()
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.sendall(request)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(hardened.header_timeout * 0.7)
    sock.sendall(request[:20])  # begun late in the connection's first timer period
    time.sleep(hardened.header_timeout * 0.6)  # past that period, within this request's deadline
    sock.sendall(request[20:])
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
    started = time.monotonic()
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert time.monotonic() - started < hardened.header_timeout * 3


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 1_000_000 + b"\r\n", b"".join(b"X-%d: 1\r\n" % i for i in range(10_000))],
    ids=["1 MB header", "10000 headers"],
)
def test_oversized_headers_are_refused(hardened, headers) -> None:
    sock = hardened.raw_socket()
    reply = b""
    try:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        while chunk := sock.recv(65536):
            reply += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed while the rest was still being sent
    finally:
        sock.close()
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:80]
    hardened.assert_http_serving()


def test_a_request_with_ordinary_headers_still_passes(hardened) -> None:
    headers = {f"X-H{i}": "v" * 100 for i in range(50)}
    status, _ = hardened.post("/v2/models/add_sub/infer", hardened.add_sub_request(), headers)
    assert status == 200


def test_binary_bytes_header_claims_stay_bounded(hardened) -> None:
    # 1,000 declared BYTES elements but 8 bytes of data: refused from the size, before decoding.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1000],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    body = header + struct.pack("<I", 4) + b"abcd"
    status, payload = hardened.post(
        "/v2/models/bytes_id/infer", body, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400 and "cannot hold" in payload["error"], payload
