"""Nereid requests/responses <-> ``pb_utils`` objects, checked against the model config.

Output datatypes come from the numpy arrays the model returns (BYTES for object/bytes/str
arrays, BF16 for uint16 where the config says BF16); a datatype or shape that disagrees with
the config fails that response with a message naming the model and the output.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from nereid.backends.python import pb_utils
from nereid.backends.python.runner import bytes_array
from nereid.proto import model_config_pb2 as mc
from nereid.server.datatypes import numpy_to_api
from nereid.server.errors import ErrorCode, InternalError, ServingError
from nereid.server.model_config import TensorSpec
from nereid.server.parameters import wire_parameters
from nereid.server.reshape import backend_output_specs
from nereid.server.sequence_config import state_outputs
from nereid.server.types import InferRequest, InferResponse, RequestedOutput, Tensor


def serving_error(error: pb_utils.TritonError) -> ServingError:
    return ServingError(error.message(), ErrorCode[error.code_name()])


def triton_error(error: ServingError) -> pb_utils.TritonError:
    code = getattr(pb_utils.TritonError, error.code.value, pb_utils.TritonError.INTERNAL)
    return pb_utils.TritonError(error.message, code)


class Codec:
    """Conversions for one model version."""

    def __init__(self, name: str, version: int, config: mc.ModelConfig) -> None:
        self.name = name
        self.version = version
        self.outputs: dict[str, TensorSpec] = {spec.name: spec for spec in backend_output_specs(config)}
        # Implicit state outputs always go back to the sequence batcher, which keeps them.
        self.states = {spec.name for spec in state_outputs(config)}
        for spec in state_outputs(config):
            self.outputs.setdefault(spec.name, spec)
        self.max_batch_size = config.max_batch_size

    def pb_request(self, request: InferRequest) -> pb_utils.InferenceRequest:
        inputs = [pb_utils.Tensor(t.name, t.data, t.datatype) for t in request.inputs]
        requested, correlation, parameters = self.request_fields(request)
        flags = sequence_flags_of(request)
        return pb_utils.InferenceRequest(
            self.name,
            requested,
            inputs,
            request_id=request.id,
            correlation_id=correlation,
            flags=flags,
            model_version=self.version,
            parameters=parameters,
        )

    def request_fields(self, request: InferRequest) -> tuple[list[str], Any, str]:
        """``(requested output names, correlation id, parameters JSON)`` as ``execute`` sees them."""
        requested = [o.name for o in request.outputs] or list(self.outputs)
        sequence = request.sequence
        # A request that skipped the core (a direct call) may carry the id as a parameter only.
        correlation = (
            sequence.correlation_id if sequence is not None else request.parameters.get("sequence_id", 0)
        )
        return requested, correlation, json.dumps(request.parameters) if request.parameters else "{}"

    def response(self, response: pb_utils.InferenceResponse, request: InferRequest) -> InferResponse:
        """The Nereid response for one of the model's responses to ``request``."""
        params = response.parameters()
        out = InferResponse(
            self.name, str(self.version), request.id, parameters=json.loads(params) if params != "{}" else {}
        )
        error = response.error()
        if error is not None:
            out.error = serving_error(error)
            return out
        wanted = {o.name for o in request.outputs}
        for tensor in response.output_tensors():
            if not isinstance(tensor, pb_utils.Tensor):
                out.error = InternalError(
                    f"model '{self.name}' returned {type(tensor).__name__} in output_tensors; expected pb_utils.Tensor"
                )
                break
            converted = self._output(tensor)
            if isinstance(converted, str):
                out.error = InternalError(f"model '{self.name}' output '{tensor.name()}': {converted}")
                break
            if not wanted or converted.name in wanted or converted.name in self.states:
                out.outputs.append(converted)
        if out.error is not None:
            out.outputs = []
        return out

    def error_response(self, request: InferRequest, message: str) -> InferResponse:
        return InferResponse(self.name, str(self.version), request.id, error=InternalError(message))

    def _output(self, tensor: pb_utils.Tensor) -> Tensor | str:
        """The Nereid tensor, or what is wrong with it."""
        array = tensor.as_numpy()
        spec = self.outputs.get(tensor.name())
        if spec is None and self.outputs:
            return "the model config declares no output of that name"
        if array.dtype.kind in "OSU":
            datatype, array = "BYTES", bytes_array(array)
        elif spec is not None and spec.datatype == "BF16" and array.dtype == np.uint16:
            datatype = "BF16"
        else:
            try:
                datatype = numpy_to_api(array.dtype)
            except ServingError:
                return f"numpy dtype {array.dtype} has no Triton datatype"
        if spec is not None:
            if datatype != spec.datatype:
                return (
                    f"datatype {datatype} (numpy {array.dtype}) does not match the config's {spec.datatype}"
                )
            dims = array.shape[1:] if self.max_batch_size > 0 else array.shape
            if (
                (self.max_batch_size > 0 and not array.shape)
                or len(dims) != len(spec.dims)
                or any(w != -1 and g != w for g, w in zip(dims, spec.dims, strict=True))
            ):
                return f"shape {list(array.shape)} does not match the config's {spec.full_shape(self.max_batch_size)}"
        return Tensor(tensor.name(), datatype, tuple(array.shape), array)


def infer_request(request: pb_utils.InferenceRequest) -> InferRequest:
    """The Nereid request for a BLS ``pb_utils.InferenceRequest``."""
    inputs = []
    for tensor in request.inputs():
        array = tensor.as_numpy()
        if array.dtype.kind in "OSU":
            datatype, array = "BYTES", bytes_array(array)
        else:
            datatype = tensor.datatype() or numpy_to_api(array.dtype)
        inputs.append(Tensor(tensor.name(), datatype, tuple(array.shape), array))
    parameters = json.loads(request.parameters())
    if request.timeout():
        parameters["timeout"] = request.timeout()
    if request.correlation_id():  # a BLS call that continues a sequence of the called model
        parameters["sequence_id"] = request.correlation_id()
        parameters["sequence_start"] = bool(
            request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
        )
        parameters["sequence_end"] = bool(request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
    version = request.model_version()
    return InferRequest(
        request.model_name(),
        inputs,
        model_version=str(version) if version >= 0 else "",
        id=request.request_id(),
        outputs=[RequestedOutput(name) for name in request.requested_output_names()],
        parameters=parameters,
    )


def pb_response(response: InferResponse) -> pb_utils.InferenceResponse:
    """A BLS result as the calling model sees it."""
    if response.error is not None:
        return pb_utils.InferenceResponse(error=triton_error(response.error))
    tensors = [pb_utils.Tensor(t.name, t.data, t.datatype) for t in response.outputs]
    return pb_utils.InferenceResponse(tensors, parameters=wire_parameters(response.parameters))


def sequence_flags_of(request: InferRequest) -> int:
    """Triton's request flags (sequence start / end) for ``request``."""
    sequence = request.sequence
    if sequence is None:
        return 0
    start = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if sequence.start else 0
    return start | (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if sequence.end else 0)
