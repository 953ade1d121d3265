"""Property-based bodies over both transports: never a 5xx (or gRPC UNKNOWN/INTERNAL), and a valid
request right after is answered correctly. Derandomized and bounded, so ``make test`` stays fast."""

from __future__ import annotations

import json
import struct

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nereid.proto import grpc_service_pb2 as pb  # noqa: E402

FUZZ = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"]
MODELS = ["add_sub", "bytes_id", "missing"]

dims = st.one_of(
    st.integers(0, 20), st.integers(-3, 2**64), st.sampled_from([2**27, 2**31, 2**40, 2**63 - 1, 2**63])
)
shapes = st.one_of(
    st.lists(dims, max_size=4), st.lists(st.just(1), min_size=60, max_size=70), st.text(max_size=3)
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=40)
junk = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=3)
)
datatypes = st.one_of(st.sampled_from(DATATYPES), junk)
parameters = st.one_of(st.none(), st.dictionaries(st.text(max_size=12), junk, max_size=3), junk)


@st.composite
def json_inputs(draw):
    item = {
        "name": draw(st.one_of(st.sampled_from(["INPUT0", "INPUT1"]), junk)),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    if draw(st.booleans()):
        item["data"] = draw(json_values)
    if draw(st.booleans()):
        item["parameters"] = draw(parameters)
    return item


@st.composite
def json_bodies(draw):
    body = {"inputs": draw(st.one_of(st.lists(json_inputs(), max_size=3), junk))}
    if draw(st.booleans()):
        body["outputs"] = draw(st.one_of(st.lists(st.dictionaries(st.just("name"), junk), max_size=2), junk))
    if draw(st.booleans()):
        body["parameters"] = draw(parameters)
    if draw(st.booleans()):
        body["id"] = draw(junk)
    return body


@given(model=st.sampled_from(MODELS), body=json_bodies())
@FUZZ
def test_json_bodies_never_5xx(hardened, model, body) -> None:
    status, payload = hardened.post(f"/v2/models/{model}/infer", json.dumps(body).encode())
    assert status < 500, (body, payload)


@given(
    model=st.sampled_from(MODELS),
    inputs=st.lists(json_inputs(), min_size=1, max_size=3),
    sizes=st.lists(st.one_of(st.integers(0, 64), st.integers(-5, 2**64), junk), min_size=3, max_size=3),
    blob=st.binary(max_size=256),
    header_length=st.one_of(st.none(), st.integers(-5, 600), st.text(max_size=4)),
)
@FUZZ
def test_binary_bodies_never_5xx(hardened, model, inputs, sizes, blob, header_length) -> None:
    for item, size in zip(inputs, sizes, strict=False):
        item.pop("data", None)
        item["parameters"] = {"binary_data_size": size}
    header = json.dumps({"inputs": inputs}).encode()
    length = str(len(header)) if header_length is None else str(header_length)
    try:
        length.encode("latin-1")
    except UnicodeEncodeError:
        length = "x"
    status, payload = hardened.post(
        f"/v2/models/{model}/infer", header + blob, {"Inference-Header-Content-Length": length}
    )
    assert status < 500, (inputs, payload)


def test_fuzzed_http_leaves_the_server_serving(hardened) -> None:
    hardened.assert_http_serving()


def _raw_bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


@st.composite
def infer_messages(draw):
    msg = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(MODELS)),
        model_version=draw(st.sampled_from(["", "1", "2", "x", "²"])),
        id=draw(st.text(max_size=8)),
    )
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = msg.inputs.add(
            name=draw(st.sampled_from(["INPUT0", "INPUT1", "", "X"])),
            datatype=draw(st.sampled_from([*DATATYPES, "", "FLOAT"])),
            shape=draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)),
        )
        if use_raw:
            raw = draw(
                st.one_of(
                    st.binary(max_size=128),
                    st.lists(st.binary(max_size=8), max_size=6).map(_raw_bytes_tensor),
                )
            )
            msg.raw_input_contents.append(raw)
        elif draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=20)))
        else:
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=6)))
    for _ in range(draw(st.integers(0, 2))):
        msg.outputs.add(name=draw(st.sampled_from(["OUTPUT0", "OUTPUT1", "", "NOPE"])))
    if draw(st.booleans()):
        msg.parameters["priority"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    return msg


SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@given(raw=st.one_of(st.binary(max_size=200), infer_messages().map(lambda m: m.SerializeToString())))
@FUZZ
def test_grpc_messages_never_unknown_or_internal(hardened, raw) -> None:
    try:
        hardened.unary_raw("ModelInfer", raw)
    except grpc.RpcError as exc:
        assert exc.code() not in SERVER_FAULTS, (raw, exc.details())


@given(
    messages=st.lists(
        st.one_of(st.binary(max_size=64), infer_messages().map(lambda m: m.SerializeToString())), max_size=4
    )
)
@settings(FUZZ, max_examples=30)
def test_grpc_streams_answer_every_message(hardened, messages) -> None:
    good = hardened.add_sub_message("good").SerializeToString()
    responses = hardened.stream_raw([*messages, good])
    finals = [r for r in responses if r.infer_response.parameters["triton_final_response"].bool_param]
    assert len(finals) == len(messages) + 1
    assert any(r.infer_response.id == "good" and not r.error_message for r in responses)


def test_fuzzed_grpc_leaves_the_server_serving(hardened) -> None:
    hardened.assert_serving()
