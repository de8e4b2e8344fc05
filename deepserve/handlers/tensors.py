"""Checking KServe v2 tensors against the served signature, with errors that say what came.

Lenient where no information is lost: any integer dtype is accepted for an INT64 input and
any float dtype for an FP32 input (cast); everything else is an ``InvalidInputError`` naming the
input, the expected datatype and shape, and what arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError, Tensors
from deepserve.store import TensorSpec

NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


def describe(spec: TensorSpec) -> str:
    return f"{spec.datatype} with shape {spec.shape}"


def _came(array: np.ndarray) -> str:
    return f"{array.dtype} array of shape {list(array.shape)}"


def _cast(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    want = NUMPY_DTYPES[spec.datatype]
    kind = np.dtype(want).kind
    if array.dtype == want:
        return array
    if (kind == "f" and array.dtype.kind in "fiu") or (kind in "iu" and array.dtype.kind in "iu"):
        return array.astype(want)
    raise InvalidInputError(f"input {spec.name!r} expects {describe(spec)}, got {_came(array)}")


def check_tensor(spec: TensorSpec, value: Any) -> np.ndarray:
    """``value`` as an array of ``spec``'s dtype whose shape matches (-1 = any, batch dim included)."""
    array = np.asarray(value)
    if spec.datatype == "BYTES":
        raise TypeError("use bytes_items() for BYTES inputs")
    array = _cast(spec, array)
    fits = array.ndim == len(spec.shape) and all(
        d in (-1, s) for d, s in zip(spec.shape, array.shape, strict=True)
    )
    if not fits:
        raise InvalidInputError(f"input {spec.name!r} expects {describe(spec)}, got {_came(array)}")
    if array.shape[0] == 0:
        raise InvalidInputError(f"input {spec.name!r} has no rows; send at least one")
    return check_finite(spec.name, array)


def check_finite(name: str, array: np.ndarray) -> np.ndarray:
    """NaN / Inf would flow through the graph and come back as null scores: refuse them here."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(f"input {name!r} holds NaN or Inf values; send finite numbers")
    return array


def bytes_items(name: str, value: Any) -> list[bytes]:
    """A BYTES tensor of shape [n] or [n, 1] (elements bytes or str) as n byte strings."""
    array = np.asarray(value, dtype=object)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.shape[0] == 0:
        raise InvalidInputError(f"input {name!r} expects BYTES with shape [-1] (or [-1, 1]), got shape "
                                f"{list(array.shape)}")  # fmt: skip
    out: list[bytes] = []
    for element in array:
        if isinstance(element, bytes | bytearray):
            out.append(bytes(element))
        elif isinstance(element, str):
            out.append(element.encode("utf-8"))
        else:
            raise InvalidInputError(f"input {name!r} expects BYTES elements, got {type(element).__name__}")
    return out


def check_names(tensors: Tensors, accepted: Iterable[TensorSpec]) -> None:
    known = {t.name for t in accepted}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise InvalidInputError(f"unknown input(s) {unknown}; this model accepts {sorted(known)}")
