"""Nereid's own ``triton_python_backend_utils``: what a Triton ``model.py`` imports as ``pb_utils``.

Written from the public documentation of Triton's Python backend, so that model files run
unchanged. The loader registers this module as ``sys.modules["triton_python_backend_utils"]``
before it imports a model file.

Covered: ``Tensor`` (numpy and DLPack), ``InferenceRequest`` (incoming requests and BLS
``exec``/``async_exec``), ``InferenceResponse``, ``InferenceResponseSender`` for decoupled
models, ``TritonError`` with its codes, ``TritonModelException``, ``ModelConfig`` for
``auto_complete_config``, ``Logger``, ``MetricFamily`` (custom metrics, :mod:`.pb_metrics`), the
model loading API and the config/type helpers. Not covered: request rescheduling, GPU tensors (DLPack input is copied to
host memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeAlias

import numpy as np

from nereid.backends.python import runtime
from nereid.backends.python.pb_errors import TritonModelException as TritonModelException
from nereid.backends.python.pb_metrics import Metric as Metric
from nereid.backends.python.pb_metrics import MetricFamily as MetricFamily

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2

TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# model_config.proto DataType numbers, which is what triton_dtype() reports.
_TYPE_NUMBERS: dict[Any, int] = {
    np.bool_: 1,
    np.uint8: 2,
    np.uint16: 3,
    np.uint32: 4,
    np.uint64: 5,
    np.int8: 6,
    np.int16: 7,
    np.int32: 8,
    np.int64: 9,
    np.float16: 10,
    np.float32: 11,
    np.float64: 12,
    np.object_: 13,
    np.bytes_: 13,
}
_NUMBER_TYPES = {number: kind for kind, number in _TYPE_NUMBERS.items() if kind is not np.bytes_}

log = logging.getLogger("nereid.backends.python.model")


# ---- errors --------------------------------------------------------------------------------


class TritonError:
    """A per-response error; ``code`` is one of the class constants (INTERNAL by default)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7
    CODE_NAMES = (
        "UNKNOWN",
        "INTERNAL",
        "NOT_FOUND",
        "INVALID_ARG",
        "UNAVAILABLE",
        "UNSUPPORTED",
        "ALREADY_EXISTS",
        "CANCELLED",
    )

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        if not 0 <= int(code) < len(self.CODE_NAMES):
            raise TritonModelException(f"unknown TritonError code {code}")
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def code_name(self) -> str:
        return self.CODE_NAMES[self._code]

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self.code_name()})"


# ---- tensors -------------------------------------------------------------------------------


class Tensor:
    """A named numpy array. BYTES tensors are ``np.object_`` arrays of ``bytes`` (``str`` is encoded)."""

    def __init__(self, name: str, data: Any, datatype: str | None = None) -> None:
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
        if array.dtype.kind == "V":
            raise TritonModelException(f"tensor '{name}': numpy dtype {array.dtype} is not supported")
        self._name = name
        self._array = array
        # The request's API datatype for inputs (e.g. BF16, which numpy carries as uint16).
        self._datatype = datatype

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def datatype(self) -> str | None:
        return self._datatype

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule over the tensor; BF16 (numpy's uint16 bit patterns) is a bfloat16 one."""
        array = self._array
        if array.dtype == np.object_:
            raise TritonModelException(f"tensor '{self._name}': BYTES tensors have no DLPack form")
        if not array.flags.writeable or not array.flags.c_contiguous:
            # Inputs sit read-only in the request's buffer, and the legacy DLPack capsule cannot
            # say "read-only": hand out a private copy that the model may write into.
            array = np.array(array, order="C", copy=True)
        if self._datatype == "BF16" and array.dtype == np.uint16:
            torch = _torch(self._name)
            return torch.utils.dlpack.to_dlpack(torch.from_numpy(array.view(np.int16)).view(torch.bfloat16))
        return array.__dlpack__()

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        return self.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """A tensor from a DLPack capsule or any object with ``__dlpack__`` (copied to host memory)."""
        # A bare capsule can be read once: let torch take it when the model already uses torch (it
        # may hold device memory); otherwise numpy reads it without importing torch.
        bare = not hasattr(capsule, "__dlpack__")
        try:
            if bare and "torch" in sys.modules:
                raise BufferError
            array = np.from_dlpack(_HostCapsule(capsule) if bare else capsule)
        except (AttributeError, TypeError, RuntimeError, BufferError):
            torch = _torch(name)
            value = capsule if isinstance(capsule, torch.Tensor) else torch.utils.dlpack.from_dlpack(capsule)
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:  # numpy has no bfloat16: keep the bits, say BF16
                return Tensor(name, value.view(torch.int16).numpy().view(np.uint16), "BF16")
            array = value.numpy()
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


def _torch(name: str) -> Any:
    try:
        import torch
        import torch.utils.dlpack
    except ImportError:
        raise TritonModelException(f"tensor '{name}': this DLPack tensor needs torch installed") from None
    return torch


class _HostCapsule:
    """A bare DLPack capsule dressed as an array, so numpy can read it (numpy refuses device memory)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


# ---- requests and responses ---------------------------------------------------------------


class InferenceResponse:
    """The response to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, list | tuple):
            raise TritonModelException('"output_tensors" must be a list.')
        if isinstance(error, str):
            error = TritonError(error)
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException('"error" must be a pb_utils.TritonError or None.')
        self._output_tensors = list(output_tensors)
        self._error = error
        self._parameters = _parameters_json(parameters)

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class SendTarget(Protocol):
    """What an :class:`InferenceResponseSender` writes to; the host provides it."""

    def send(self, response: InferenceResponse | None, final: bool) -> None: ...

    def cancelled(self) -> bool: ...

    def abandon(self) -> None:
        """The sender was dropped without a final response: end the request with an error."""
        ...


class InferenceResponseSender:
    """Sends any number of responses for one request of a decoupled model.

    The last call must pass ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (``response`` may then
    be None). A sender dropped before that ends its request with an error instead of hanging.
    """

    def __init__(self, target: SendTarget) -> None:
        self._target = target
        self._closed = False
        self._lock = threading.Lock()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException("send() takes a pb_utils.InferenceResponse or None")
        if response is None and not final:
            raise TritonModelException(
                "send() without a response needs flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL"
            )
        with self._lock:
            if self._closed:
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            self._closed = final
            self._target.send(response, final)

    def close(self) -> None:
        """End the request without another response (older examples call this)."""
        self.send(None, TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def is_cancelled(self) -> bool:
        return self._target.cancelled()

    def _fail(self, error: TritonError) -> None:
        """End the request with ``error`` unless it already ended (the host does this on failures)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._target.send(InferenceResponse(error=error), True)

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with contextlib.suppress(Exception):  # nothing to report to during garbage collection
            self._target.abandon()


class InferenceRequest:
    """A request: one that ``execute`` receives, or one the model builds to call another model (BLS)."""

    def __init__(
        self,
        model_name: str | bytes = "",
        requested_output_names: list[str] | tuple[str, ...] = (),
        inputs: list[Tensor] | tuple[Tensor, ...] = (),
        request_id: str = "",
        correlation_id: int | str = 0,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        for tensor in inputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException("InferenceRequest inputs must be pb_utils.Tensor objects")
        self._model_name = model_name.decode() if isinstance(model_name, bytes) else str(model_name)
        self._requested_output_names = list(requested_output_names)
        self._inputs = list(inputs)
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._model_version = int(model_version)
        self._flags = flags
        self._timeout = int(timeout)
        self._parameters = _parameters_json(parameters)
        self._sender: InferenceResponseSender | None = None
        self._is_cancelled: Callable[[], bool] | None = None

    def model_name(self) -> str:
        return self._model_name

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def model_version(self) -> int:
        return self._model_version

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def requested_output_names(self) -> list[str]:
        return self._requested_output_names

    def parameters(self) -> str:
        """The request parameters as a JSON string (``json.loads`` it)."""
        return self._parameters

    def is_cancelled(self) -> bool:
        return self._is_cancelled() if self._is_cancelled is not None else False

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException(
                "get_response_sender() is only available to decoupled models "
                "(model_transaction_policy { decoupled: true })"
            )
        return self._sender

    def set_release_flags(self, flags: int) -> None:
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("request rescheduling is not supported by Nereid")

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on another model and wait: one response, or an iterator if ``decoupled``."""
        return _execute(runtime.current(), self, decoupled)

    async def async_exec(self, decoupled: bool = False) -> Any:
        """``exec`` as an awaitable, for ``async def execute``."""
        bls = runtime.current()
        loop = asyncio.get_running_loop()
        if decoupled:
            responses = await loop.run_in_executor(None, lambda: list(_execute(bls, self, True)))
            return iter(responses)
        return await loop.run_in_executor(None, _execute, bls, self, False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sender"] = state["_is_cancelled"] = None
        return state


_Runtime: TypeAlias = runtime.BlsRuntime[InferenceRequest, InferenceResponse]


def _execute(bls: _Runtime | None, request: InferenceRequest, decoupled: bool) -> Any:
    if not request._model_name:
        raise TritonModelException("InferenceRequest needs 'model_name' to be executed")
    if bls is None:
        error = TritonError("BLS is only available while Nereid serves this model", TritonError.UNAVAILABLE)
        responses: Iterator[InferenceResponse] = iter([InferenceResponse(error=error)])
    else:
        responses = bls.run(request, decoupled)
    return responses if decoupled else next(responses)


def _parameters_json(parameters: dict[str, Any] | str | None) -> str:
    if parameters is None:
        return "{}"
    if isinstance(parameters, str):
        return parameters
    for key, value in parameters.items():
        if not isinstance(key, str) or not isinstance(value, bool | int | float | str):
            raise TritonModelException(f"parameter '{key}' must map a str to a bool, int, float or str")
    return json.dumps(parameters)


# ---- helpers -------------------------------------------------------------------------------


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((entry for entry in model_config.get("input", []) if entry["name"] == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((entry for entry in model_config.get("output", []) if entry["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def triton_string_to_numpy(triton_type_string: str) -> Any:
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    return _NUMBER_TYPES.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    kind = np.dtype(data_type)
    if kind.kind == "S":
        return 13
    return _TYPE_NUMBERS.get(kind.type)


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray:
    """Elements as 4-byte little-endian lengths followed by the bytes, as one uint8 array."""
    parts = []
    for item in input_tensor.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += [struct.pack("<I", len(raw)), raw]
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    items, offset, buffer = [], 0, bytes(encoded_tensor)
    while offset < len(buffer):
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        items.append(buffer[offset : offset + length])
        offset += length
    return np.array(items, dtype=np.object_)


# ---- model loading API ---------------------------------------------------------------------


def _bls_runtime() -> _Runtime:
    bls = runtime.current()
    if bls is None:
        raise TritonModelException("the model loading API is only available while Nereid serves this model")
    return bls


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    return _bls_runtime().model_ready(model_name, str(model_version))


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    if files:
        raise TritonModelException("load_model(files=...) is not supported by Nereid")
    _bls_runtime().load_model(model_name, config)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    _bls_runtime().unload_model(model_name)


# ---- logging -------------------------------------------------------------------------------


class Logger:
    """``pb_utils.Logger.log_info(msg)`` and friends; messages go to the server log."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3
    _LEVELS = {INFO: logging.INFO, WARNING: logging.WARNING, ERROR: logging.ERROR, VERBOSE: logging.DEBUG}

    @staticmethod
    def log(msg: str, level: int = INFO) -> None:
        log.log(Logger._LEVELS.get(level, logging.INFO), "%s", msg)

    @staticmethod
    def log_info(msg: str) -> None:
        log.info("%s", msg)

    @staticmethod
    def log_warn(msg: str) -> None:
        log.warning("%s", msg)

    @staticmethod
    def log_error(msg: str) -> None:
        log.error("%s", msg)

    @staticmethod
    def log_verbose(msg: str) -> None:
        log.debug("%s", msg)


# ---- auto-complete -------------------------------------------------------------------------


class ModelConfig:
    """The config handed to ``auto_complete_config``; the returned object becomes the model's config.

    ``as_dict()`` is the config in Triton's JSON form (every field present, enums as names).
    """

    _INPUT_KEYS = ("name", "data_type", "dims", "optional")
    _OUTPUT_KEYS = ("name", "data_type", "dims")

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        self._model_config = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])
        self._model_config.setdefault("max_batch_size", 0)

    @property
    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def as_dict(self) -> dict[str, Any]:
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = self._model_config["max_batch_size"]
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but auto_complete_config for model "
                f"'{self._name}' specified max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._model_config:
                raise ValueError(
                    f"configuration specified scheduling_choice '{other}', but auto_complete_config for "
                    f"model '{self._name}' sets 'dynamic_batching'"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input, self._INPUT_KEYS)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output, self._OUTPUT_KEYS)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        unknown = set(transaction_policy_dict) - {"decoupled"}
        if unknown:
            raise ValueError(
                f"model_transaction_policy for model '{self._name}' has properties other than 'decoupled': "
                f"{sorted(unknown)}"
            )
        policy = self._model_config.setdefault("model_transaction_policy", {})
        wanted = bool(transaction_policy_dict.get("decoupled", False))
        if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
            raise ValueError(
                f"configuration specified decoupled {policy['decoupled']}, but auto_complete_config for "
                f"model '{self._name}' specified decoupled {wanted}"
            )
        policy["decoupled"] = wanted

    def _add(self, kind: str, entry: dict[str, Any], allowed: tuple[str, ...]) -> None:
        where = f"{kind} '{entry.get('name', '')}' in auto_complete_config for model '{self._name}'"
        extra = set(entry) - set(allowed)
        if extra:
            raise ValueError(f"{where} has properties other than {', '.join(allowed)}: {sorted(extra)}")
        for key in ("name", "data_type", "dims"):
            if key not in entry:
                raise ValueError(f"{where} is missing the '{key}' property")
        entry = {**entry, "dims": [int(d) for d in entry["dims"]]}
        for current in self._model_config[kind]:
            if current["name"] != entry["name"]:
                continue
            datatype = current.get("data_type", "TYPE_INVALID")
            if datatype not in ("TYPE_INVALID", entry["data_type"]):
                raise ValueError(
                    f"unable to load model '{self._name}': configuration expects datatype {datatype} for "
                    f"{kind} '{entry['name']}', model provides {entry['data_type']}"
                )
            dims = [int(d) for d in current.get("dims", [])]
            if dims and dims != entry["dims"]:
                raise ValueError(
                    f"model '{self._name}', tensor '{entry['name']}': the model expects dims {entry['dims']} "
                    f"but the model configuration specifies dims {dims}"
                )
            current.update(entry)
            return
        self._model_config[kind].append(entry)
