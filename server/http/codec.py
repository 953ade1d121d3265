"""KServe v2 HTTP codec: JSON tensors and the binary tensor data extension.

The only module that knows the HTTP wire format of inference requests and responses.
Every check happens before anything is allocated from client-supplied sizes.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import numpy as np
import orjson

from nereid.server.catalog import ModelMetadata
from nereid.server.datatypes import (
    DATATYPES,
    NUMPY_DTYPES,
    SizeMismatch,
    element_count,
    tensor_from_raw,
    tensor_to_raw,
)
from nereid.server.errors import InvalidArgument
from nereid.server.parameters import wire_parameters
from nereid.server.shared_memory import SharedMemoryRegistry, output_window, place_output, read_input
from nereid.server.stats import ModelStatistics
from nereid.server.types import InferRequest, InferResponse, RequestedOutput, Tensor
from nereid.server.validation import MAX_TENSORS, check_shape, check_tensor_count, raw_element_limit

MAX_JSON_DEPTH = 100
#: Most JSON objects an inference request's header may hold: each input and requested output
#: (at most MAX_TENSORS of each) with its parameters, and the request's own. Objects cost the
#: parser the most per byte, so more are refused before parsing.
MAX_JSON_OBJECTS = 4 * MAX_TENSORS + 8
# A JSON string, escapes included: braces inside strings are not objects.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_INT_KINDS = "iu"
_JSON_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY


def loads(data: bytes) -> Any:
    """Parse JSON, rejecting malformed text and nesting deeper than MAX_JSON_DEPTH."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON: {exc}") from None
    # Each level of nesting needs an opening bracket, so a body with few of them is shallow enough.
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:
        _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidArgument(f"request JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list) and item and isinstance(item[0], dict | list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))


def dumps(value: Any) -> bytes:
    """JSON bytes; dataclasses (the core's typed answers) encode by field name."""
    return orjson.dumps(value, option=_JSON_DUMPS_OPTS)


def model_metadata_json(meta: ModelMetadata) -> bytes:
    """The v2 model metadata object (``decoupled`` is not part of it)."""
    return dumps(
        {
            "name": meta.name,
            "versions": meta.versions,
            "platform": meta.platform,
            "inputs": meta.inputs,
            "outputs": meta.outputs,
        }
    )


def statistics_json(stats: list[ModelStatistics]) -> bytes:
    """The statistics extension's ``{"model_stats": [...]}``; field names are Triton's."""
    return dumps({"model_stats": [_present_fields(entry) for entry in stats]})


def _present_fields(value: Any) -> dict[str, Any]:
    """A dataclass as a dict without its unset (None) fields; nested dataclasses encode as they are."""
    return {f.name: v for f in fields(value) if (v := getattr(value, f.name)) is not None}


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} 'parameters' must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str):
            raise InvalidArgument(f"{where} parameter '{key}' must be a boolean, number or string")
    return value


def decode_request(
    body: bytes,
    header_length: int | None,
    model_name: str,
    model_version: str,
    shm: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """An InferRequest from a JSON body, optionally followed by binary tensor data.

    Inputs may come from, and requested outputs may name, regions registered in ``shm``.
    """
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidArgument(
                f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
            )
        if header_length == 0:
            raise InvalidArgument(
                "raw binary requests (Inference-Header-Content-Length: 0) are not supported"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    # Counting braces runs at memory speed; only a body with many strips its strings to be sure.
    if header.count(b"{") > MAX_JSON_OBJECTS and _JSON_STRING.sub(b"", header).count(b"{") > MAX_JSON_OBJECTS:
        raise InvalidArgument(
            f"the request JSON holds more than {MAX_JSON_OBJECTS} objects; a request may carry at most "
            f"{MAX_TENSORS} inputs and {MAX_TENSORS} requested outputs"
        )
    obj = loads(header)
    if not isinstance(obj, dict):
        raise InvalidArgument("the inference request must be a JSON object")
    request_id = obj.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("request 'id' must be a string")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("the request needs a non-empty 'inputs' list")
    raw_outputs = _list(obj.get("outputs", []), "outputs")
    check_tensor_count(len(raw_inputs), len(raw_outputs))
    inputs: list[Tensor] = []
    offset = 0
    for item in raw_inputs:
        tensor, used = _decode_input(item, binary, offset, len(header), shm, model_name)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidArgument(
            f"the body has {len(binary) - offset} bytes of binary data that no input's binary_data_size claims"
        )
    outputs = [_decode_output(item, shm) for item in raw_outputs]
    parameters = _parameters(obj.get("parameters"), "request")
    _check_bool(parameters, "binary_data_output", "request")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
    )


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"'{what}' must be a list")
    return value


def _decode_input(
    item: Any, binary: memoryview, offset: int, json_size: int, shm: SharedMemoryRegistry | None, model: str
) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise InvalidArgument("each input must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("each input needs a 'name' string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidArgument(f"input '{name}': unknown datatype {_brief(datatype)}")
    params = _parameters(item.get("parameters"), f"input '{name}'")
    size = params.get("binary_data_size")
    shared = read_input(shm, name, params)
    if shared is not None:
        if "data" in item or size is not None:
            raise InvalidArgument(
                f"input '{name}': 'data' and 'binary_data_size' must not be given with shared memory"
            )
        return _raw_tensor(name, datatype, item.get("shape"), shared, params, model), 0
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"input '{name}': 'binary_data_size' must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidArgument(
                f"input '{name}': binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)"
            )
        params = {k: v for k, v in params.items() if k != "binary_data_size"}
        return _raw_tensor(
            name, datatype, item.get("shape"), binary[offset : offset + size], params, model
        ), size
    if "data" not in item:
        raise InvalidArgument(f"input '{name}' has neither 'data' nor 'binary_data_size'")
    # Each JSON element takes at least one character of the body.
    shape = check_shape(name, item.get("shape"), json_size)
    return Tensor(name, datatype, shape, json_data(name, datatype, shape, item["data"]), params), 0


def _raw_tensor(
    name: str, datatype: str, shape_value: Any, raw: bytes | memoryview, params: dict[str, Any], model: str
) -> Tensor:
    shape = check_shape(name, shape_value, raw_element_limit(datatype, len(raw)))
    try:
        data = tensor_from_raw(datatype, shape, raw)
    except SizeMismatch as exc:
        raise exc.named(name, model) from None
    except InvalidArgument as exc:
        raise InvalidArgument(f"input '{name}': {exc.message}") from None
    return Tensor(name, datatype, shape, data, params)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Numbers, booleans or strings from JSON, checked to fit ``datatype`` exactly."""
    count = element_count(shape)
    if datatype in ("FP16", "BF16"):
        raise InvalidArgument(
            f"receiving {datatype} data via JSON is not supported. Please use the binary data format for input '{name}'"
        )
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise _count_error(name, len(flat), shape)
        out = np.empty(count, dtype=object)
        for i, element in enumerate(flat):
            if not isinstance(element, str):
                raise InvalidArgument(f"input '{name}': BYTES data must be strings, got {element!r}")
            out[i] = element.encode("utf-8")
        return out.reshape(shape)
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"input '{name}': data is not a regular array of {datatype} values") from None
    if array.size != count:
        raise _count_error(name, array.size, shape)
    kind = array.dtype.kind
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        ok = kind == "b" or count == 0
    elif dtype.kind in _INT_KINDS:
        if kind in "fO":  # integers beyond int64 turn into floats or objects: recheck exactly
            array = _big_ints(name, datatype, data)
            kind = array.dtype.kind
        ok = kind in _INT_KINDS or count == 0
        if ok and count:
            info = np.iinfo(dtype)
            ok = int(array.min()) >= info.min and int(array.max()) <= info.max
            if not ok:
                raise InvalidArgument(
                    f"input '{name}': value out of range for {datatype} (allowed {info.min}..{info.max})"
                )
    else:
        ok = kind in "iuf" or count == 0
        if ok and count and datatype == "FP32" and kind == "f":
            finite = np.isfinite(array)
            ok = bool(np.all(np.abs(array[finite]) <= np.finfo(np.float32).max))
            if not ok:
                raise InvalidArgument(f"input '{name}': value out of range for FP32")
    if not ok:
        raise InvalidArgument(f"input '{name}': data does not match datatype {datatype}")
    return array.astype(dtype, copy=False).reshape(shape)


def _big_ints(name: str, datatype: str, data: list[Any]) -> np.ndarray:
    flat = _flatten(data)
    if not all(type(v) is int for v in flat):
        raise InvalidArgument(f"input '{name}': data does not match datatype {datatype}")
    try:
        return np.array(flat, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        raise InvalidArgument(f"input '{name}': value out of range for {datatype}") from None


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for element in stack[-1]:
            if isinstance(element, list):
                stack.append(iter(element))
                break
            flat.append(element)
        else:
            stack.pop()
    return flat


def _count_error(name: str, got: int, shape: tuple[int, ...]) -> InvalidArgument:
    return InvalidArgument(
        f"unexpected number of elements for input '{name}': got {got}, shape {list(shape)} "
        f"needs {element_count(shape)}"
    )


def _decode_output(item: Any, shm: SharedMemoryRegistry | None) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument("each requested output must be an object with a 'name'")
    parameters = _parameters(item.get("parameters"), f"output '{item['name']}'")
    _check_bool(parameters, "binary_data", f"output '{item['name']}'")
    output_window(shm, item["name"], parameters)
    return RequestedOutput(item["name"], parameters)


def _check_bool(parameters: dict[str, Any], key: str, where: str) -> None:
    """Triton refuses a non-boolean ``binary_data`` / ``binary_data_output`` ("yes" is not true)."""
    if key in parameters and not isinstance(parameters[key], bool):
        raise InvalidArgument(f"{where}: parameter '{key}' must be a boolean, got {parameters[key]!r}")


def encode_response(
    request: InferRequest, response: InferResponse, shm: SharedMemoryRegistry | None = None
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length.

    An output whose request named a shared memory region is written there; its entry carries
    the region's parameters instead of data.
    """
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wanted = {o.name: o.parameters for o in request.outputs}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        params = wanted.get(tensor.name, {})
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        placed = place_output(shm, tensor, params) if params else None
        if placed is not None:
            entry["parameters"] = placed
        elif params.get("binary_data", default_binary):
            raw = tensor_to_raw(tensor.datatype, tensor.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_values(tensor)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = wire_parameters(response.parameters)
    body["outputs"] = outputs
    header = dumps(body)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _json_values(tensor: Tensor) -> Any:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        try:
            return [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in flat]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output '{tensor.name}' holds bytes that are not UTF-8; request it with binary_data: true"
            ) from None
    if tensor.datatype == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(flat)
