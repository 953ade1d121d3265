"""ModelStreamInfer with tritonclient.grpc (start_stream) and tritonclient.grpc.aio (stream_infer).

Decoupled responses come from the test-only ``repeat_test`` backend (see conftest.py).
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from nereid.proto import grpc_service_pb2 as pb
from nereid.proto import grpc_service_pb2_grpc


def _count(n: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT0", [1], "INT32")
    tensor.set_data_from_numpy(np.array([n], dtype=np.int32))
    return [tensor]


def _add_sub_inputs(value: float) -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.full((1, 16), value, np.float32))
        inputs.append(tensor)
    return inputs


def _final(result: grpcclient.InferResult) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


class Collector:
    """A start_stream callback that queues (result, error) pairs."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()

    def __call__(self, result, error) -> None:
        self.items.put((result, error))

    def take(self, count: int, timeout: float = 10) -> list:
        return [self.items.get(timeout=timeout) for _ in range(count)]

    def empty_after(self, seconds: float) -> bool:
        time.sleep(seconds)
        return self.items.empty()


@pytest.fixture
def served(repo, start_server, models):
    repo.add_sub()
    models.repeat("repeat", instances=2)
    return start_server(repo.root)


def test_ordinary_model_on_a_stream_answers_in_request_order(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    collector = Collector()
    client.start_stream(collector)
    try:
        for i in range(6):
            client.async_stream_infer("add_sub", _add_sub_inputs(i), request_id=f"r{i}")
        items = collector.take(6)
    finally:
        client.stop_stream()
    assert [error for _, error in items] == [None] * 6
    assert [result.get_response().id for result, _ in items] == [f"r{i}" for i in range(6)]
    for i, (result, _) in enumerate(items):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2 * i, np.float32))
        assert _final(result)


def test_decoupled_responses_and_final_flags(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    collector = Collector()
    client.start_stream(collector)
    try:
        # Without the opt-in there is no empty final response; every response says "not final".
        client.async_stream_infer("repeat", _count(3), request_id="plain")
        plain = collector.take(3)
        assert collector.empty_after(0.2)
        assert [r.as_numpy("OUTPUT0").tolist() for r, _ in plain] == [[0], [1], [2]]
        assert [(r.get_response().id, _final(r)) for r, _ in plain] == [("plain", False)] * 3
        assert all(r.get_response().model_name == "repeat" for r, _ in plain)

        client.async_stream_infer("repeat", _count(2), request_id="empty", enable_empty_final_response=True)
        with_empty = collector.take(3)
        assert [_final(r) for r, _ in with_empty] == [False, False, True]
        last = with_empty[-1][0].get_response()
        assert last.id == "empty" and len(last.outputs) == 0 and len(last.raw_output_contents) == 0

        client.async_stream_infer("repeat", _count(0), request_id="none", enable_empty_final_response=True)
        ((only, _),) = collector.take(1)
        assert _final(only) and only.get_response().id == "none" and not only.get_response().outputs

        client.async_stream_infer("repeat", _count(2), request_id="inline", parameters={"inline_final": True})
        inline = collector.take(2)
        assert [_final(r) for r, _ in inline] == [False, True]
        assert collector.empty_after(0.2)
    finally:
        client.stop_stream()


def test_stream_errors_keep_the_stream_open(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    collector = Collector()
    client.start_stream(collector)
    try:
        client.async_stream_infer("repeat", _count(-1), request_id="bad")
        client.async_stream_infer("nope", _count(1), request_id="unknown")
        client.async_stream_infer("add_sub", _count(1), request_id="wrong-inputs")
        client.async_stream_infer("repeat", _count(1), request_id="bad-version", model_version="5")
        errors = [error for _, error in collector.take(4)]
        messages = sorted(str(e) for e in errors)
        assert all(e is not None for e in errors)
        assert any("count must be >= 0" in m for m in messages)
        assert any("unknown model" in m for m in messages)
        assert any("INPUT0" in m or "input" in m for m in messages)
        client.async_stream_infer("repeat", _count(2), request_id="after", enable_empty_final_response=True)
        after = collector.take(3)
        assert [e for _, e in after] == [None] * 3 and _final(after[-1][0])
    finally:
        client.stop_stream()


def test_many_requests_in_flight_on_one_stream(served):
    async def main() -> tuple[list[tuple[str, int, bool]], float]:
        async with aioclient.InferenceServerClient(served.grpc_url) as client:

            async def requests() -> AsyncIterator[dict]:
                for name in ("a", "b"):
                    yield {
                        "model_name": "repeat",
                        "inputs": _count(5),
                        "request_id": name,
                        "parameters": {"delay_ms": 60, "inline_final": True},
                    }

            seen: list[tuple[str, int, bool]] = []
            started = time.perf_counter()
            stream = client.stream_infer(requests())
            async for result, error in stream:
                assert error is None
                seen.append((result.get_response().id, int(result.as_numpy("OUTPUT0")[0]), _final(result)))
                if sum(final for *_, final in seen) == 2:
                    break
            elapsed = time.perf_counter() - started
            stream.cancel()
            return seen, elapsed

    seen, elapsed = asyncio.run(main())
    for name in ("a", "b"):
        assert [(i, f) for n, i, f in seen if n == name] == [
            (0, False),
            (1, False),
            (2, False),
            (3, False),
            (4, True),
        ]
    assert [n for n, *_ in seen] != ["a"] * 5 + ["b"] * 5, "responses of the two requests should interleave"
    assert elapsed < 0.55, f"two 5 x 60 ms requests on two instances took {elapsed:.2f}s"


def test_cancelling_the_stream_cancels_in_flight_requests(served, events):
    async def main() -> None:
        async with aioclient.InferenceServerClient(served.grpc_url) as client:

            async def requests() -> AsyncIterator[dict]:
                yield {"model_name": "repeat", "inputs": _count(1000), "request_id": "long",
                       "parameters": {"delay_ms": 10}}  # fmt: skip
                await asyncio.sleep(30)  # keep the stream open

            stream = client.stream_infer(requests())
            received = 0
            async for _result, error in stream:
                assert error is None
                received += 1
                if received == 3:
                    break
            stream.cancel()

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while not events.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events.cancelled == ["long"]
    client = grpcclient.InferenceServerClient(served.grpc_url)
    assert client.is_server_ready()
    stats = client.get_inference_statistics("repeat").model_stats[0].inference_stats
    assert stats.fail.count == 1


def test_half_close_waits_for_in_flight_responses(served):
    """Closing the sending side is not a cancel: every response still arrives."""
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="repeat", id="r")
        request.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
        request.raw_input_contents.append(np.array([4], np.int32).tobytes())
        request.parameters["delay_ms"].int64_param = 30
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        responses = list(stub.ModelStreamInfer(iter([request])))
    assert [r.error_message for r in responses] == [""] * 5
    assert [r.infer_response.parameters["triton_final_response"].bool_param for r in responses] == [
        False
    ] * 4 + [True]


def test_triton_grpc_error_header_ends_the_stream_with_a_status(served):
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        bad = pb.ModelInferRequest(model_name="nope", id="x")
        call = stub.ModelStreamInfer(iter([bad]), metadata=[("triton_grpc_error", "true")])
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "unknown model" in info.value.details()


def test_unary_infer_refuses_decoupled_models(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("repeat", _count(1))
    assert str(info.value.status()) == "StatusCode.UNIMPLEMENTED"
    assert "decoupled" in info.value.message()
