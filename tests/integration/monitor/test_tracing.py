"""W3C trace context over HTTP headers and gRPC metadata, stage spans, batch links, the trace file."""

from __future__ import annotations

import json
import threading

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.proto import grpc_service_pb2 as pb
from nereid.proto import grpc_service_pb2_grpc

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = int("0af7651916cd43dd8448eb211c80319c", 16)
PARENT_ID = int("b7ad6b7169203331", 16)
STAGES = {"infer", "decode", "queue", "batch", "compute_input", "compute_infer", "compute_output"}


def _inputs(module, rows: int = 1) -> list:
    data = np.arange(4 * rows, dtype=np.float32).reshape(rows, 4)
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def _check_request_trace(spans: list, protocol: str) -> None:
    names = {s.name for s in spans}
    assert names >= STAGES, names
    root = next(s for s in spans if s.name == "infer")
    assert root.parent is not None and root.parent.span_id == PARENT_ID and root.parent.is_remote
    assert root.attributes["nereid.model"] == "identity"
    assert root.attributes["nereid.protocol"] == protocol
    by_id = {s.context.span_id: s for s in spans}
    for span in spans:
        if span is not root:
            assert span.parent is not None and span.parent.span_id in by_id, span.name
            assert span.start_time <= span.end_time
    batch = next(s for s in spans if s.name == "batch")
    assert by_id[next(s for s in spans if s.name == "compute_infer").parent.span_id] is batch
    assert batch.attributes["nereid.batch.size"] >= 1


def test_traceparent_over_http_headers(spans_of, traced):
    with httpclient.InferenceServerClient(traced.http_url) as client:
        client.infer("identity", _inputs(httpclient), headers={"traceparent": TRACEPARENT})
    _check_request_trace(spans_of(traced, TRACE_ID), "http")


def test_traceparent_over_grpc_metadata(spans_of, traced):
    trace_id = TRACE_ID + 1
    parent = f"00-{trace_id:032x}-{PARENT_ID:016x}-01"
    with grpcclient.InferenceServerClient(traced.grpc_url) as client:
        client.infer("identity", _inputs(grpcclient), headers={"traceparent": parent})
    spans = spans_of(traced, trace_id)
    assert spans
    for span in spans:
        span_trace = span.context.trace_id
        assert span_trace == trace_id
    root = next(s for s in spans if s.name == "infer")
    assert root.parent.span_id == PARENT_ID and root.attributes["nereid.protocol"] == "grpc"


def test_response_carries_the_request_span(spans_of, traced):
    response = httpx.post(
        f"http://{traced.http_url}/v2/models/plain/infer",
        json={"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    )
    assert response.status_code == 200
    _version, trace_hex, span_hex, flags = response.headers["traceparent"].split("-")
    assert trace_hex == f"{TRACE_ID:032x}" and span_hex != f"{PARENT_ID:016x}" and flags == "01"
    root = next(s for s in spans_of(traced, TRACE_ID) if s.context.span_id == int(span_hex, 16))
    assert root.context.trace_state.get("vendor") == "1"


def test_grpc_metadata_echoes_trace_and_request_id(spans_of, traced):
    with grpc.insecure_channel(traced.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="plain")
        tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
        tensor.contents.fp32_contents.append(1.0)
        _, call = stub.ModelInfer.with_call(
            request, metadata=(("traceparent", TRACEPARENT), ("x-request-id", "grpc-req-7"))
        )
    trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "grpc-req-7"
    assert trailing["traceparent"].split("-")[1] == f"{TRACE_ID:032x}"


def test_batch_span_links_the_requests_of_a_batch(spans_of, traced):
    ids = [TRACE_ID + 100 + i for i in range(3)]
    barrier = threading.Barrier(len(ids))

    def call(trace_id: int) -> None:
        with httpclient.InferenceServerClient(traced.http_url) as client:
            barrier.wait()
            client.infer(
                "identity",
                _inputs(httpclient),
                headers={"traceparent": f"00-{trace_id:032x}-{PARENT_ID:016x}-01"},
            )

    threads = [threading.Thread(target=call, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches = [next(s for s in spans_of(traced, t) if s.name == "batch") for t in ids]
    linked = [b for b in batches if b.links]
    assert linked, "the 50 ms batching window should put at least two requests in one batch"
    for batch in linked:
        assert batch.attributes["nereid.batch.requests"] >= 2
        roots = {link.context.trace_id for link in batch.links}
        assert roots <= set(ids) and batch.context.trace_id not in roots


def test_trace_file_holds_json_lines(spans_of, traced, trace_dir):
    with httpclient.InferenceServerClient(traced.http_url) as client:
        client.infer("plain", _inputs(httpclient), headers={"traceparent": TRACEPARENT})
    traced.core.tracing.flush()
    lines = (trace_dir / "trace.jsonl").read_text().splitlines()
    spans = [json.loads(line) for line in lines]
    assert any(s["name"] == "infer" and s["attributes"]["nereid.model"] == "plain" for s in spans)
    assert all(s["context"]["trace_id"].startswith("0x") for s in spans)


@pytest.mark.parametrize(
    "value",
    ["garbage", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "ff-" + TRACEPARENT[3:],
     "00-00000000000000000000000000000000-b7ad6b7169203331-01", TRACEPARENT.upper()[:-2] + "zz"],
)  # fmt: skip
def test_malformed_traceparent_is_refused(spans_of, traced, value):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    response = httpx.post(
        f"http://{traced.http_url}/v2/models/plain/infer", json=body, headers={"traceparent": value}
    )
    assert response.status_code == 400 and "traceparent" in response.json()["error"]
    with (
        grpcclient.InferenceServerClient(traced.grpc_url) as client,
        pytest.raises(InferenceServerException) as info,
    ):
        client.infer("plain", _inputs(grpcclient), headers={"traceparent": value})
    assert "INVALID_ARGUMENT" in str(info.value.status()) and "traceparent" in info.value.message()


def test_x_request_id_is_adopted_and_echoed(spans_of, traced):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    response = httpx.post(
        f"http://{traced.http_url}/v2/models/plain/infer", json=body, headers={"x-request-id": "abc-123"}
    )
    assert response.headers["x-request-id"] == "abc-123" and response.json()["id"] == "abc-123"
    response = httpx.post(f"http://{traced.http_url}/v2/models/plain/infer", json={**body, "id": "body-id"})
    assert response.headers["x-request-id"] == "body-id"


def test_each_request_of_a_grpc_stream_is_traced_under_the_calls_traceparent(spans_of, traced):
    trace_id = TRACE_ID + 7
    parent = f"00-{trace_id:032x}-{PARENT_ID:016x}-01"
    results: list = []
    done = threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 2:
            done.set()

    with grpcclient.InferenceServerClient(traced.grpc_url) as client:
        client.start_stream(callback=callback, headers={"traceparent": parent})
        for request_id in ("s1", "s2"):
            client.async_stream_infer("plain", _inputs(grpcclient), request_id=request_id)
        assert done.wait(30)
        client.stop_stream()
    assert all(error is None for _, error in results)
    roots = [s for s in spans_of(traced, trace_id) if s.name == "infer"]
    assert len(roots) == 2
    assert all(r.parent.span_id == PARENT_ID and r.attributes["nereid.protocol"] == "grpc" for r in roots)
