"""KServe v2 datatypes: names, numpy dtypes, config enums and the BYTES wire encoding.

BF16 has no numpy dtype; Nereid carries it as ``uint16`` bit patterns, which is what
every transport puts on the wire anyway.
"""

from __future__ import annotations

import struct

import numpy as np

from nereid.server.errors import InvalidArgument

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(object),
}
DATATYPES = frozenset(NUMPY_DTYPES)

# Fixed element sizes in bytes; BYTES is variable.
ELEMENT_SIZE: dict[str, int] = {k: v.itemsize for k, v in NUMPY_DTYPES.items() if k != "BYTES"}

# model_config.proto DataType enum name <-> API datatype.
_CONFIG_TO_API = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
_API_TO_CONFIG = {v: k for k, v in _CONFIG_TO_API.items()}

_NUMPY_TO_API: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPES.items() if k != "BF16"}


def config_to_api(type_name: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; raises KeyError for TYPE_INVALID or unknown names."""
    return _CONFIG_TO_API[type_name]


def api_to_config(datatype: str) -> str:
    return _API_TO_CONFIG[datatype]


def numpy_to_api(dtype: np.dtype) -> str:
    """The API datatype of a numpy dtype (``str``/``bytes`` arrays count as BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return "BYTES"
    try:
        return _NUMPY_TO_API[dtype]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {dtype} has no KServe v2 datatype") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Row-major elements, each as a 4-byte little-endian length followed by its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


class SizeMismatch(InvalidArgument):
    """Raw tensor data that does not fit its shape: too many or too few bytes, or BYTES elements.

    The codecs know the input's and the model's names; :meth:`named` words it as Triton does.
    """

    def __init__(self, message: str, expected: int, got: int, elements: bool) -> None:
        super().__init__(message)
        self.expected, self.got, self.elements = expected, got, elements

    def named(self, name: str, model: str) -> InvalidArgument:
        if self.elements:
            return InvalidArgument(
                f"expected {self.expected} string elements for inference input '{name}' "
                f"for model '{model}', got {self.got}"
            )
        return InvalidArgument(
            f"input byte size mismatch for input '{name}' for model '{model}'. "
            f"Expected {self.expected}, got {self.got}"
        )


def _whole_elements(view: memoryview) -> int | None:
    """How many length-prefixed elements fill ``view`` exactly; None when the last one is cut short."""
    offset, count, size = 0, 0, len(view)
    while offset + 4 <= size:
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4 + length
        count += 1
    return count if offset == size else None


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int) -> np.ndarray:
    """Parse exactly ``count`` length-prefixed elements that must fill ``buffer`` exactly."""
    view = memoryview(buffer)
    offset, size = 0, len(view)
    found = _whole_elements(view)  # one pass over the prefixes, bounded by size / 4
    if found is not None and found != count:
        raise SizeMismatch(
            f"expected {count} string elements, got {found}", expected=count, got=found, elements=True
        )
    if count * 4 > size:
        # Each element has a 4-byte length prefix: refuse before allocating one slot per element.
        raise InvalidArgument(
            f"BYTES data holds fewer elements than the shape requires ({count} need at least "
            f"{count * 4} bytes of length prefixes, got {size} bytes)"
        )
    out = np.empty(count, dtype=object)
    for i in range(count):
        if offset + 4 > size:
            raise InvalidArgument(f"BYTES data holds fewer elements than the shape requires ({i} of {count})")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > size:
            raise InvalidArgument("BYTES element length runs past the end of the tensor data")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != size:
        raise InvalidArgument(
            f"BYTES data has {size - offset} unexpected trailing bytes after {count} elements"
        )
    return out


def tensor_from_raw(datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """Decode row-major little-endian tensor bytes, checking the size against the shape."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count).reshape(shape)
    expected = count * ELEMENT_SIZE[datatype]
    if len(raw) != expected:
        raise SizeMismatch(
            f"unexpected raw data size {len(raw)} for {datatype} tensor of shape {list(shape)}, "
            f"expecting {expected} bytes",
            expected=expected,
            got=len(raw),
            elements=False,
        )
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if datatype == "BOOL":
        return array.astype(np.bool_, copy=False)
    return array


def tensor_to_raw(datatype: str, array: np.ndarray) -> bytes:
    """Encode a tensor as row-major little-endian bytes (BYTES with length prefixes)."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
