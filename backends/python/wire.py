"""What an execute call looks like on the socket to a stub: small headers, tensor bytes in arenas.

Used by both sides (:mod:`~nereid.backends.python.isolation` in the server,
:mod:`~nereid.backends.python.stub` in the stub); imports nothing of the server.

    RequestItem   (key, request id, correlation id, sequence flags, parameters JSON, requested outputs, [Header])
    ResponseItem  ((message, code) | None, parameters JSON, [Header])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nereid.backends.python import pb_utils
from nereid.backends.python.arena import Arena, Header, Named
from nereid.backends.python.runner import bytes_array

RequestItem = tuple[int, str, Any, int, str, list[str], list[Header]]
ResponseItem = tuple[tuple[str, int] | None, str, list[Header]]


def output_tensors(response: pb_utils.InferenceResponse) -> list[Named] | pb_utils.TritonError:
    """A response's tensors ready to cross (BYTES as ``bytes`` objects), or what is wrong with them."""
    tensors: list[Named] = []
    for tensor in response.output_tensors():
        if not isinstance(tensor, pb_utils.Tensor):
            return pb_utils.TritonError(
                f"returned {type(tensor).__name__} in output_tensors; expected pb_utils.Tensor"
            )
        array = tensor.as_numpy()
        if array.dtype.kind in "OU":
            array = bytes_array(array)
        tensors.append((tensor.name(), tensor.datatype(), array))
    return tensors


def pack_responses(
    responses: list[pb_utils.InferenceResponse], arena: Arena
) -> tuple[list[ResponseItem], int]:
    """Every response's outputs packed into ``arena`` together; returns the items and the bytes needed."""
    plan: list[tuple[tuple[str, int] | None, str, int]] = []
    tensors: list[Named] = []
    for response in responses:
        error = response.error()
        found = output_tensors(response) if error is None else error
        if isinstance(found, pb_utils.TritonError):
            plan.append(((found.message(), found.code()), "{}", 0))
            continue
        plan.append((None, response.parameters(), len(found)))
        tensors += found
    headers, needed = arena.pack(tensors)
    items: list[ResponseItem] = []
    start = 0
    for failure, parameters, count in plan:
        items.append((failure, parameters, headers[start : start + count]))
        start += count
    return items, needed


def unpack_responses(items: list[ResponseItem], arena: Arena) -> list[pb_utils.InferenceResponse]:
    """The server's copies of a call's responses (the arena is reused by the next call)."""
    out = []
    for error, parameters, headers in items:
        if error is not None:
            out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(*error)))
            continue
        tensors = [pb_utils.Tensor(h[0], arena.array(h, copy=True), h[1]) for h in headers]
        out.append(pb_utils.InferenceResponse(tensors, parameters=parameters))
    return out


def unpack_requests(
    items: list[RequestItem], arena: Arena, model_name: str, version: int, copy: bool
) -> list[pb_utils.InferenceRequest]:
    """The requests a stub hands ``execute``: inputs view the arena unless ``copy``."""
    requests = []
    for _, request_id, correlation, flags, parameters, requested, headers in items:
        inputs = [pb_utils.Tensor(h[0], arena.array(h, copy), h[1]) for h in headers]
        requests.append(
            pb_utils.InferenceRequest(
                model_name,
                requested,
                inputs,
                request_id=request_id,
                correlation_id=correlation,
                flags=flags,
                model_version=version,
                parameters=parameters,
            )
        )
    return requests


def named(tensors: list[Any]) -> list[Named]:
    """Nereid tensors (``.name``, ``.datatype``, ``.data``) as arena inputs."""
    return [
        (t.name, t.datatype, t.data if isinstance(t.data, np.ndarray) else np.asarray(t.data))
        for t in tensors
    ]
