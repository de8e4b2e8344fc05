"""KServe v2 tensors <-> numpy: datatypes, the raw little-endian byte layout, and JSON ``data``.

Shared by the HTTP binary extension and gRPC ``raw_input_contents``. Every check names the
tensor and says what was expected, since this is where malformed client input lands.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from deepserve.service.errors import InvalidRequestError

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}  # fmt: skip
_KINDS = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items() if name not in ("BYTES", "BOOL")}
_LEN = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype name of a numpy array (object / str / bytes arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    if array.dtype.kind == "b":
        return "BOOL"
    try:
        return _KINDS[(array.dtype.kind, array.dtype.itemsize)]
    except KeyError:
        raise InvalidRequestError(f"numpy dtype {array.dtype} has no KServe v2 datatype") from None


def check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidRequestError(
            f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    return shape


def dtype_for(name: str, datatype: Any) -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except (KeyError, TypeError):
        hint = " (BF16 is not supported; send FP16 or FP32)" if datatype == "BF16" else ""
        raise InvalidRequestError(
            f"input {name!r}: unknown datatype {datatype!r}{hint}; use one of {', '.join(DTYPES)}"
        ) from None


def from_raw(name: str, datatype: Any, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """Decode one tensor from the v2 binary layout (BYTES elements are uint32-length prefixed)."""
    dtype = dtype_for(name, datatype)
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(name, shape, count, memoryview(raw))
    if len(raw) != count * dtype.itemsize:
        raise InvalidRequestError(
            f"input {name!r}: {datatype} shape {shape} needs {count * dtype.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _bytes_from_raw(name: str, shape: list[int], count: int, raw: memoryview) -> np.ndarray:
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidRequestError(f"input {name!r}: BYTES element length prefix is truncated")
        (size,) = _LEN.unpack_from(raw, offset)
        offset += 4
        if offset + size > end:
            raise InvalidRequestError(f"input {name!r}: BYTES element of {size} bytes runs past the data")
        items.append(bytes(raw[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InvalidRequestError(
            f"input {name!r}: shape {shape} needs {count} BYTES elements, got {len(items)}"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """Encode one tensor in the v2 binary layout."""
    if array.dtype.kind in "OSU":
        parts = []
        for element in array.reshape(-1):
            data = element.encode() if isinstance(element, str) else bytes(element)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def from_json(name: str, datatype: Any, shape: list[int], data: Any) -> np.ndarray:
    """Decode JSON ``data`` (flat or nested, row-major); BYTES elements are strings."""
    dtype = dtype_for(name, datatype)
    if datatype == "FP16":
        raise InvalidRequestError(f"input {name!r}: FP16 data must be sent with the binary extension")
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            array = np.empty(flat.size, dtype=object)
            array[:] = [e.encode() if isinstance(e, str) else _json_bytes(name, e) for e in flat]
        else:
            array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequestError(f"input {name!r}: data is not valid {datatype}: {exc}") from None
    if array.size != count:
        raise InvalidRequestError(
            f"input {name!r}: shape {shape} needs {count} elements, data has {array.size}"
        )
    return array.reshape(shape)


def _json_bytes(name: str, element: Any) -> bytes:
    if isinstance(element, bytes):
        return element
    raise InvalidRequestError(f"input {name!r}: BYTES elements in JSON must be strings, got {element!r}")


def to_json_data(array: np.ndarray) -> list[Any]:
    """Flat row-major JSON data; BYTES become strings (invalid UTF-8 is replaced, binary keeps it)."""
    flat = array.reshape(-1)
    if array.dtype.kind in "OSU":
        return [e.decode("utf-8", "replace") if isinstance(e, bytes) else str(e) for e in flat]
    result: list[Any] = flat.tolist()
    return result
