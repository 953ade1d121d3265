"""KServe v2 gRPC codec: ModelInferRequest -> InferRequest and InferResponse -> ModelInferResponse.

The only module that knows the protobuf form of inference requests and responses. Tensor
data comes either all in ``raw_input_contents`` (little-endian, BYTES with 4-byte length
prefixes) or per input in typed ``InferTensorContents``; responses always use
``raw_output_contents``, like Triton. Sizes are checked against shapes before anything is
allocated from client-supplied numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from nereid.proto import grpc_service_pb2 as pb
from nereid.server.catalog import IndexEntry, ModelMetadata, ServerMetadata
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
from nereid.server.shared_memory import REGION as _SHARED_MEMORY
from nereid.server.shared_memory import (
    CudaRegionStatus,
    RegionStatus,
    SharedMemoryRegistry,
    output_window,
    place_output,
    read_input,
    require_enabled,
)
from nereid.server.stats import Duration, ModelStatistics
from nereid.server.types import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor
from nereid.server.validation import check_shape, check_tensor_count, raw_element_limit

# Datatype -> the InferTensorContents field that carries it, and that field's element dtype.
# FP16 and BF16 have no typed field: they only travel in raw contents.
_TYPED: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}
_NARROW = frozenset({"INT8", "INT16", "UINT8", "UINT16"})
_INT64_MAX = 2**63 - 1


M = TypeVar("M", bound=Message)


def parse(message_type: type[M], raw: bytes) -> M:
    """``raw`` parsed as ``message_type``; InvalidArgument when it is not a valid message
    (bad wire bytes, or strings that are not UTF-8)."""
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument(
            f"the {message_type.DESCRIPTOR.full_name} message cannot be parsed: {exc}"
        ) from None


# ---- parameters ------------------------------------------------------------------------------


def decode_parameters(params: Mapping[str, pb.InferParameter], where: str) -> Parameters:
    """Plain Python values from ``InferParameter`` oneofs (bool, int, float or str)."""
    out: Parameters = {}
    if not params:
        return out
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidArgument(f"{where} parameter '{key}' has no value")
        out[key] = getattr(param, choice)
    return out


def encode_parameters(values: Mapping[str, Any], target: Any) -> None:
    """Write plain values into a ``map<string, InferParameter>`` field."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool | np.bool_):
            param.bool_param = bool(value)
        elif isinstance(value, int | np.integer):
            if value > _INT64_MAX:
                param.uint64_param = int(value)
            else:
                param.int64_param = int(value)
        elif isinstance(value, float | np.floating):
            param.double_param = float(value)
        else:
            param.string_param = value if isinstance(value, str) else str(value)


# ---- requests --------------------------------------------------------------------------------


def decode_request(msg: pb.ModelInferRequest, shm: SharedMemoryRegistry | None = None) -> InferRequest:
    """An InferRequest from a ModelInferRequest; malformed tensors raise InvalidArgument.

    Inputs may come from, and requested outputs may name, regions registered in ``shm``; an
    input in shared memory takes no ``raw_input_contents`` entry (as tritonclient sends it).
    """
    check_tensor_count(len(msg.inputs), len(msg.outputs))
    raw = msg.raw_input_contents
    in_shm = [_SHARED_MEMORY in tensor.parameters for tensor in msg.inputs]
    with_data = in_shm.count(False)
    if with_data < len(in_shm):
        require_enabled(shm)
    if raw and len(raw) != with_data:
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request has {with_data} inputs "
            "outside shared memory; when raw contents are used each of them needs exactly one"
        )
    contents = iter(raw)
    inputs = [
        _decode_input(tensor, None if shared or not raw else next(contents), shm, msg.model_name)
        for tensor, shared in zip(msg.inputs, in_shm, strict=True)
    ]
    outputs = [_decode_output(output, shm) for output in msg.outputs]
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        outputs=outputs,
        parameters=decode_parameters(msg.parameters, "request"),
    )


def _decode_input(
    msg: pb.ModelInferRequest.InferInputTensor,
    raw: bytes | memoryview | None,
    shm: SharedMemoryRegistry | None,
    model: str,
) -> Tensor:
    name, datatype = msg.name, msg.datatype
    if not name:
        raise InvalidArgument("each input needs a name")
    if datatype not in DATATYPES:
        raise InvalidArgument(f"input '{name}': unknown datatype '{datatype[:40]}'")
    params = decode_parameters(msg.parameters, f"input '{name}'")
    shared = read_input(shm, name, params)
    if shared is not None:
        if msg.HasField("contents"):
            raise InvalidArgument(f"input '{name}': contents must not be specified with shared memory")
        raw = shared
    if raw is not None:
        if msg.HasField("contents"):
            raise InvalidArgument(
                f"input '{name}': contents must not be specified when raw_input_contents is used"
            )
        shape = check_shape(name, list(msg.shape), raw_element_limit(datatype, len(raw)))
        data = _from_raw(name, datatype, shape, raw, model)
    else:
        shape = check_shape(name, list(msg.shape), _typed_count(msg.contents))
        data = _from_typed(name, datatype, shape, msg.contents)
    return Tensor(name, datatype, shape, data, params)


def _typed_count(contents: pb.InferTensorContents) -> int:
    """How many values the typed contents hold (only one of its fields may be set)."""
    return max((len(values) for _, values in contents.ListFields()), default=0)


def _from_raw(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview, model: str
) -> np.ndarray:
    try:
        return tensor_from_raw(datatype, shape, raw)
    except SizeMismatch as exc:
        raise exc.named(name, model) from None
    except InvalidArgument as exc:
        raise InvalidArgument(f"input '{name}': {exc.message}") from None
    except ValueError as exc:  # numpy refuses shapes it cannot represent
        raise InvalidArgument(f"input '{name}': shape {list(shape)} is not valid: {exc}") from None


def _from_typed(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    typed = _TYPED.get(datatype)
    if typed is None:
        raise InvalidArgument(
            f"input '{name}': {datatype} data must be sent in raw_input_contents (it has no typed contents field)"
        )
    field, wire_dtype = typed
    for descriptor, _ in contents.ListFields():
        if descriptor.name != field:
            raise InvalidArgument(
                f"input '{name}': datatype {datatype} takes '{field}', but the request sets '{descriptor.name}'"
            )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"unexpected number of elements for input '{name}': got {len(values)}, "
            f"shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        array = np.array(values, dtype=wire_dtype)
        if datatype in _NARROW and count:
            info = np.iinfo(NUMPY_DTYPES[datatype])
            if int(array.min()) < info.min or int(array.max()) > info.max:
                raise InvalidArgument(
                    f"input '{name}': value out of range for {datatype} (allowed {info.min}..{info.max})"
                )
        array = array.astype(NUMPY_DTYPES[datatype], copy=False)
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise InvalidArgument(f"input '{name}': shape {list(shape)} is not valid: {exc}") from None


def _decode_output(
    msg: pb.ModelInferRequest.InferRequestedOutputTensor, shm: SharedMemoryRegistry | None
) -> RequestedOutput:
    if not msg.name:
        raise InvalidArgument("each requested output needs a name")
    params = decode_parameters(msg.parameters, f"output '{msg.name}'")
    output_window(shm, msg.name, params)
    return RequestedOutput(msg.name, params)


# ---- responses -------------------------------------------------------------------------------


def encode_response(
    response: InferResponse, request: InferRequest | None = None, shm: SharedMemoryRegistry | None = None
) -> pb.ModelInferResponse:
    """A ModelInferResponse with every output in ``raw_output_contents``.

    An output whose ``request`` named a shared memory region is written there instead: it gets
    the region's parameters and an empty ``raw_output_contents`` entry, so that every other
    output keeps its index.
    """
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    if response.parameters:
        encode_parameters(wire_parameters(response.parameters), msg.parameters)
    wanted = {o.name: o.parameters for o in request.outputs if o.parameters} if request is not None else {}
    for tensor in response.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            encode_parameters(tensor.parameters, out.parameters)
        params = wanted.get(tensor.name)
        placed = place_output(shm, tensor, params) if params else None
        if placed is not None:
            encode_parameters(placed, out.parameters)
            msg.raw_output_contents.append(b"")
        else:
            msg.raw_output_contents.append(tensor_to_raw(tensor.datatype, tensor.data))
    return msg


def encode_shm_status(regions: list[RegionStatus]) -> pb.SystemSharedMemoryStatusResponse:
    """The system shared memory status: each region under its name."""
    msg = pb.SystemSharedMemoryStatusResponse()
    for r in regions:
        msg.regions[r.name].CopyFrom(
            msg.RegionStatus(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
        )
    return msg


def encode_cuda_shm_status(regions: list[CudaRegionStatus]) -> pb.CudaSharedMemoryStatusResponse:
    """The CUDA shared memory status: each region under its name."""
    msg = pb.CudaSharedMemoryStatusResponse()
    for r in regions:
        msg.regions[r.name].CopyFrom(
            msg.RegionStatus(name=r.name, device_id=r.device_id, byte_size=r.byte_size)
        )
    return msg


def encode_server_metadata(meta: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)


def encode_model_metadata(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
    )


def encode_index(rows: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(
        models=[index(name=r.name, version=r.version, state=r.state, reason=r.reason) for r in rows]
    )


def _duration(value: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value.count, ns=value.ns)


def encode_statistics(stats: ModelStatistics) -> pb.ModelStatistics:
    """One version's statistics as a ``ModelStatistics`` message."""
    infer = stats.inference_stats
    return pb.ModelStatistics(
        name=stats.name,
        version=stats.version,
        last_inference=stats.last_inference,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(infer.success),
            fail=_duration(infer.fail),
            queue=_duration(infer.queue),
            compute_input=_duration(infer.compute_input),
            compute_infer=_duration(infer.compute_infer),
            compute_output=_duration(infer.compute_output),
            cache_hit=_duration(infer.cache_hit),
            cache_miss=_duration(infer.cache_miss),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b.batch_size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for b in stats.batch_stats
        ],
    )
