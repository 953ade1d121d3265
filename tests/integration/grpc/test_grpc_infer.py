"""ModelInfer through NVIDIA's tritonclient.grpc: every datatype, output subsets, errors.

Cases tritonclient cannot produce (typed contents, raw and typed together, a wrong number of
raw contents, malformed BYTES) go through Nereid's own generated stubs.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from nereid.proto import grpc_service_pb2 as pb
from nereid.proto import grpc_service_pb2_grpc
from nereid.server.datatypes import NUMPY_DTYPES

NUMERIC = [name for name in NUMPY_DTYPES if name not in ("BF16", "BYTES")]


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _code(exc: InferenceServerException) -> str:
    return str(exc.status())


@pytest.fixture
def served(repo, start_server, models):
    """add_sub, an ORT identity per datatype, and exact echo models for BYTES and BF16."""
    repo.add_sub()
    for datatype in [*NUMERIC, "BYTES"]:
        repo.identity(f"identity_{datatype.lower()}", datatype)
    models.echo("echo_bytes", "BYTES")
    models.echo("echo_bf16", "BF16")
    return start_server(repo.root)


def test_every_datatype_roundtrips(served, sample):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    for datatype in NUMERIC:
        data = sample(datatype, (2, 3))
        result = client.infer(f"identity_{datatype.lower()}", [_input("INPUT0", data, datatype)])
        out = result.as_numpy("OUTPUT0")
        assert out.dtype == data.dtype and out.shape == data.shape, datatype
        np.testing.assert_array_equal(out, data, err_msg=datatype)
        assert result.get_output("OUTPUT0").datatype == datatype

    text = np.array([["hello", "", "wörld"], ["a\x00b", "x" * 300, "\x00"]], dtype=object)
    result = client.infer("identity_bytes", [_input("INPUT0", text, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == [[s.encode() for s in row] for row in text]

    raw = np.array([b"\x00\xff\x00", b"", b"\xfe\x00" * 50, b"\x00"], dtype=object)
    result = client.infer("echo_bytes", [_input("INPUT0", raw, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == raw.tolist()

    # BF16: tritonclient sends the top 16 bits of float32 values; these are exact in BF16.
    bf16 = np.array([1.5, -2.0, 0.15625, 0.0, 65280.0, -3.0e38], dtype=np.float32)
    bf16 = (bf16.view(np.uint32) & 0xFFFF0000).view(np.float32)
    result = client.infer("echo_bf16", [_input("INPUT0", bf16, "BF16")])
    assert result.get_output("OUTPUT0").datatype == "BF16"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), bf16)


def test_add_sub_matches_onnxruntime_and_output_subsets(served, repo, rng):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    a = rng.standard_normal((3, 16)).astype(np.float32)
    b = rng.standard_normal((3, 16)).astype(np.float32)
    session = ort.InferenceSession(str(repo.root / "add_sub" / "1" / "model.onnx"))
    want_sum, want_diff = session.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    inputs = [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")]

    result = client.infer("add_sub", inputs, request_id="req-7")
    response = result.get_response()
    assert response.id == "req-7" and response.model_name == "add_sub" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert len(response.raw_output_contents) == 2
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), want_sum)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), want_diff)

    only_diff = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in only_diff.get_response().outputs] == ["OUTPUT1"]
    assert only_diff.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only_diff.as_numpy("OUTPUT1"), want_diff)

    versioned = client.infer("add_sub", inputs, model_version="1", priority=1, timeout=10_000_000)
    np.testing.assert_array_equal(versioned.as_numpy("OUTPUT0"), want_sum)
    assert versioned.get_response().id == ""


def test_bad_requests_fail_with_the_right_status_and_the_server_keeps_serving(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    ok = np.ones((1, 16), dtype=np.float32)
    good = [_input("INPUT0", ok, "FP32"), _input("INPUT1", ok, "FP32")]
    cases = {
        "unknown model": ("nope", good, None, {}, "StatusCode.NOT_FOUND"),
        "unknown version": ("add_sub", good, None, {"model_version": "7"}, "StatusCode.NOT_FOUND"),
        "wrong datatype": (
            "add_sub",
            [_input("INPUT0", ok.astype(np.int32), "INT32"), good[1]],
            None,
            {},
            "StatusCode.INVALID_ARGUMENT",
        ),
        "wrong shape": (
            "add_sub",
            [_input("INPUT0", np.ones((1, 8), np.float32), "FP32"), good[1]],
            None,
            {},
            "StatusCode.INVALID_ARGUMENT",
        ),
        "missing input": ("add_sub", good[:1], None, {}, "StatusCode.INVALID_ARGUMENT"),
        "unknown input": (
            "add_sub",
            [*good, _input("INPUT2", ok, "FP32")],
            None,
            {},
            "StatusCode.INVALID_ARGUMENT",
        ),
        "unknown output": (
            "add_sub",
            good,
            [grpcclient.InferRequestedOutput("OUTPUT9")],
            {},
            "StatusCode.INVALID_ARGUMENT",
        ),
        "negative timeout": ("add_sub", good, None, {"timeout": -5}, "StatusCode.INVALID_ARGUMENT"),
    }
    for label, (model, inputs, outputs, extra, code) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs, outputs=outputs, **extra)
        assert _code(info.value) == code, (label, info.value)
        result = client.infer("add_sub", good)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), ok + ok)


def test_oversized_message_is_resource_exhausted(repo, start_server):
    repo.identity("identity")
    running = start_server(repo.root, grpc_max_input_size=1024 * 1024)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    big = np.zeros((1, 300_000), dtype=np.float32)  # 1.2 MB
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity", [_input("INPUT0", big, "FP32")])
    assert _code(info.value) == "StatusCode.RESOURCE_EXHAUSTED"
    small = np.arange(8, dtype=np.float32).reshape(1, 8)
    np.testing.assert_array_equal(
        client.infer("identity", [_input("INPUT0", small, "FP32")]).as_numpy("OUTPUT0"), small
    )


# ---- our own stubs, for what tritonclient never sends -------------------------------------------


def _typed_request(
    model: str, datatype: str, shape: list[int], field: str, values: list
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def test_typed_contents_for_every_datatype(served):
    fields = {
        "BOOL": ("bool_contents", [True, False, True]),
        "UINT8": ("uint_contents", [0, 7, 255]),
        "UINT16": ("uint_contents", [0, 7, 65535]),
        "UINT32": ("uint_contents", [0, 7, 2**32 - 1]),
        "UINT64": ("uint64_contents", [0, 7, 2**64 - 1]),
        "INT8": ("int_contents", [-128, 0, 127]),
        "INT16": ("int_contents", [-32768, 0, 32767]),
        "INT32": ("int_contents", [-(2**31), 0, 2**31 - 1]),
        "INT64": ("int64_contents", [-(2**63), 0, 2**63 - 1]),
        "FP32": ("fp32_contents", [1.5, -0.25, 3.0e38]),
        "FP64": ("fp64_contents", [1.5, -0.25, 1.0e300]),
        "BYTES": ("bytes_contents", [b"a\x00b", b"", b"text"]),
    }
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for datatype, (field, values) in fields.items():
            request = _typed_request(f"identity_{datatype.lower()}", datatype, [1, 3], field, values)
            response = stub.ModelInfer(request)
            assert not response.outputs[0].HasField("contents")  # always raw, like Triton
            out = grpcclient.InferResult(response).as_numpy("OUTPUT0")
            assert out.reshape(-1).tolist() == (
                values if datatype != "FP32" else np.array(values, np.float32).tolist()
            ), datatype


def test_malformed_tensors_are_invalid_argument(served):
    four = np.ones(4, np.float32).tobytes()

    def raw_request(
        datatype: str = "FP32", shape: tuple[int, ...] = (1, 4), raw: bytes = four
    ) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="identity_" + datatype.lower())
        request.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        return request

    both = raw_request()
    both.inputs[0].contents.fp32_contents.extend([1, 1, 1, 1])
    too_many = raw_request()
    too_many.raw_input_contents.append(four)
    mixed = _typed_request("add_sub", "FP32", [1, 16], "fp32_contents", [0.0] * 16)
    mixed.raw_input_contents.append(b"\x00" * 64)
    mixed.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16])
    cases = {
        "raw and typed contents": (both, "contents must not be specified"),
        "more raw contents than inputs": (too_many, "raw_input_contents has 2 entries"),
        "raw for some inputs only": (mixed, "raw_input_contents has 1 entries"),
        "raw size mismatch": (
            raw_request(raw=four[:-2]),
            "input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 16, got 14",
        ),
        "typed count mismatch": (
            _typed_request("identity_fp32", "FP32", [1, 4], "fp32_contents", [1.0, 2.0]),
            "unexpected number of elements",
        ),
        "typed wrong field": (
            _typed_request("identity_fp32", "FP32", [1, 2], "int_contents", [1, 2]),
            "takes 'fp32_contents'",
        ),
        "typed FP16": (
            _typed_request("identity_fp16", "FP16", [1, 1], "fp32_contents", [1.0]),
            "must be sent in raw_input_contents",
        ),
        "typed INT8 out of range": (
            _typed_request("identity_int8", "INT8", [1, 1], "int_contents", [300]),
            "out of range for INT8",
        ),
        "unknown datatype": (raw_request(datatype="FP8"), "unknown datatype 'FP8'"),
        "negative dims": (raw_request(shape=(1, -4)), "non-negative"),
        "absurd dims raw": (raw_request(shape=(1, 2**62)), "input byte size mismatch for input 'INPUT0'"),
        "absurd dims typed": (
            _typed_request("identity_fp32", "FP32", [2**40, 2**20], "fp32_contents", [1.0]),
            "unexpected number of elements",
        ),
        "absurd dims empty": (raw_request(shape=(0, 2**62, 2**62), raw=b""), "is not valid"),
        "absurd BYTES dims": (raw_request("BYTES", (1, 2**40), b"\x00" * 8), "cannot hold"),
        "truncated BYTES": (raw_request("BYTES", (1, 1), b"\x05\x00\x00\x00ab"), "runs past the end"),
        "BYTES trailing data": (raw_request("BYTES", (1, 1), b"\x01\x00\x00\x00abc"), "trailing bytes"),
    }
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for label, (request, message) in cases.items():
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, info.value.details())
            assert message in info.value.details(), (label, info.value.details())
            assert time.perf_counter() - started < 1.0, label
        shm = raw_request()
        shm.inputs[0].parameters["shared_memory_region"].string_param = "region"
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(shm)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert stub.ModelInfer(raw_request()).raw_output_contents[0] == four


def test_unary_cancellation_reaches_the_queue(repo, start_server, models, events):
    models.echo("slow", "FP32", instances=1)
    running = start_server(repo.root)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    data = np.ones(2, np.float32)
    done: list[object] = []
    client.async_infer(
        "slow",
        [_input("INPUT0", data, "FP32")],
        callback=lambda result, error: done.append(error or result),
        request_id="first",
        parameters={"delay_ms": 600},
    )
    time.sleep(0.1)
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [_input("INPUT0", data, "FP32")], request_id="second", client_timeout=0.2)
    assert "Deadline" in str(info.value) or _code(info.value) == "StatusCode.DEADLINE_EXCEEDED"
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert events.executed == ["first"]  # "second" was dropped from the queue, never executed
    stats = client.get_inference_statistics("slow").model_stats[0].inference_stats
    assert stats.success.count == 1 and stats.fail.count == 1
    np.testing.assert_array_equal(
        client.infer("slow", [_input("INPUT0", data, "FP32")]).as_numpy("OUTPUT0"), data
    )


def test_concurrent_unary_calls_do_not_wait_for_each_other(repo, start_server, models):
    models.echo("slow", "FP32", instances=8)
    running = start_server(repo.root)

    async def main() -> float:
        async with aioclient.InferenceServerClient(running.grpc_url) as client:

            async def one(i: int) -> None:
                data = np.full(3, i, np.float32)
                tensor = aioclient.InferInput("INPUT0", [3], "FP32")
                tensor.set_data_from_numpy(data)
                result = await client.infer("slow", [tensor], request_id=str(i), parameters={"delay_ms": 300})
                assert result.get_response().id == str(i)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(8)))
            return time.perf_counter() - started

    elapsed = asyncio.run(main())
    assert elapsed < 1.2, f"8 calls of 300 ms on 8 instances took {elapsed:.2f}s"
