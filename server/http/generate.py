"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` and ``.../generate_stream``.

The body is one JSON object: optional ``id``, optional ``parameters`` (request parameters), and every other key
an input tensor by name (strings become BYTES, booleans BOOL, numbers the model's datatype; scalars get shape
[1], lists their own shape, plus a batch dimension of 1 for batching models). A model that declares an optional
``stream`` BOOL input gets ``stream: false`` from ``generate`` and ``true`` from ``generate_stream`` unless the
body sets it. A response is ``{"model_name", "model_version", "id"?, <output>: value, <parameter>: value}``.

``generate`` answers once: outputs of several (decoupled) responses are merged, strings concatenated.
``generate_stream`` sends server-sent events, ``data: {json}\\n\\n`` per response. An error before the first
event is an ordinary JSON error with its HTTP status; a later one is an event ``data: {"error": "..."}``. A client
that disconnects cancels the request.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nereid.server.catalog import TensorMetadata
from nereid.server.core import InferenceCore
from nereid.server.errors import Cancelled, InvalidArgument, as_serving_error
from nereid.server.http import codec
from nereid.server.http.asgi import Request, Send, respond, send_event, start_events
from nereid.server.http.disconnect import cancel_on_disconnect
from nereid.server.http.observe import begin_trace
from nereid.server.parameters import wire_parameters
from nereid.server.types import InferRequest, InferResponse, Tensor

_RESERVED = ("id", "parameters")


async def generate(
    core: InferenceCore, request: Request, send: Send, name: str, version: str, stream: bool
) -> None:
    trace = begin_trace(core, request, name)
    infer_request = decode_request(core, await request.json(), name, version, stream)
    infer_request.trace = trace
    if stream:
        await _generate_stream(core, request, send, infer_request)
        return
    body = codec.dumps(await cancel_on_disconnect(request, _collect(core, infer_request)))
    await respond(send, 200, body)


async def _collect(core: InferenceCore, infer_request: InferRequest) -> dict[str, Any]:
    body: dict[str, Any] = {}
    async for response in core.stream(infer_request):
        if response.error is not None:
            raise response.error
        for key, value in encode_response(response).items():
            old = body.get(key)
            if isinstance(old, str) and isinstance(value, str) and response.output(key) is not None:
                value = old + value  # a streamed string output: concatenate the pieces
            body[key] = value
    body.setdefault("model_name", infer_request.model_name)
    return body


class _EventStream:
    """Server-sent events on one response; the headers go out with the first event."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            await start_events(self.send)

    async def event(self, payload: dict[str, Any]) -> None:
        await self.start()
        await send_event(self.send, payload)

    async def close(self) -> None:
        await self.start()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


async def _generate_stream(
    core: InferenceCore, request: Request, send: Send, infer_request: InferRequest
) -> None:
    events = _EventStream(send)

    async def pump() -> None:
        try:
            async for response in core.stream(infer_request):
                if response.error is None:
                    await events.event(encode_response(response))
                elif events.started:
                    await events.event({"error": response.error.message})
                else:
                    raise response.error
        except Exception as exc:
            if not events.started:
                raise  # an ordinary JSON error with its status
            await events.event({"error": as_serving_error(exc).message})
        await events.close()

    try:
        await cancel_on_disconnect(request, pump())
    except Cancelled:
        if not events.started:
            raise


def decode_request(core: InferenceCore, body: Any, name: str, version: str, stream: bool) -> InferRequest:
    if not isinstance(body, dict):
        raise InvalidArgument("the generate request must be a JSON object")
    request_id = body.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("request 'id' must be a string")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    for key, value in parameters.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
        ):
            raise InvalidArgument(f"parameter '{key}' must be a boolean, number, string or a flat list")
    specs = {spec.name: spec for spec in core.model_metadata(name, version).inputs}
    values = {k: v for k, v in body.items() if k not in _RESERVED}
    stream_spec = specs.get("stream")
    if "stream" not in values and stream_spec is not None and stream_spec.datatype == "BOOL":
        values["stream"] = stream
    inputs = [_tensor(key, value, specs.get(key)) for key, value in values.items()]
    return InferRequest(name, inputs, version, request_id, parameters=dict(parameters))


def _tensor(name: str, value: Any, spec: TensorMetadata | None) -> Tensor:
    shape = _shape_of(value)
    datatype = spec.datatype if spec is not None else _datatype_of(value)
    if spec is not None and len(spec.shape) == len(shape) + 1:
        shape = (1, *shape)  # the batch dimension of a batching model
    return Tensor(name, datatype, shape, codec.json_data(name, datatype, shape, value))


def _shape_of(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return (1,)
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        value = value[0] if value else None
    return tuple(dims)


def _datatype_of(value: Any) -> str:
    while isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, str):
        return "BYTES"
    if isinstance(value, bool):
        return "BOOL"
    return "INT64" if isinstance(value, int) else "FP64"


def encode_response(response: InferResponse) -> dict[str, Any]:
    """Model, version and id, the response's parameters (in wire form), then each output by name (outputs win)."""
    body: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        body["id"] = response.id
    for key, value in wire_parameters(response.parameters).items():
        body.setdefault(key, value)
    for tensor in response.outputs:
        body[tensor.name] = _value(tensor)
    return body


def _value(tensor: Tensor) -> Any:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        values: list[Any] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    elif tensor.datatype == "BF16":
        values = (flat.astype(np.uint32) << 16).view(np.float32).tolist()
    else:
        values = flat.tolist()
    if len(values) == 1:
        return values[0]
    return (
        np.asarray(values, dtype=object).reshape(tensor.shape).tolist() if len(tensor.shape) > 1 else values
    )
