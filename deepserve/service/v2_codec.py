"""The KServe v2 REST infer body: JSON header (+ binary tensor extension) <-> ``InferRequest``.

Validated by hand instead of with a pydantic model: a 600 KB image as JSON would otherwise
cost more to validate than to run. Binary tensors follow the JSON header in the order the
inputs appear in it (the binary tensor data extension of Triton's HTTP protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepserve.service import json_codec
from deepserve.service.errors import InvalidRequestError
from deepserve.service.tensors import check_shape, datatype_of, from_json, from_raw, to_json_data, to_raw

_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass
class InferRequest:
    """A decoded v2 infer request, transport-independent (gRPC builds the same object)."""

    tensors: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


@dataclass
class InferResult:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidRequestError(
            f"Inference-Header-Content-Length must be an integer, got {value!r}"
        ) from None
    if length < 0 or length > body_length:
        raise InvalidRequestError(
            f"Inference-Header-Content-Length {length} is outside the {body_length}-byte body"
        )
    return length


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    if header_length == 0:
        raise InvalidRequestError(
            "raw binary requests (Inference-Header-Content-Length: 0) are not supported; send a JSON header"
        )
    header_bytes = body if header_length is None else body[:header_length]
    try:
        header = json_codec.loads(header_bytes)
    except (json_codec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise InvalidRequestError('request must be a JSON object with a non-empty "inputs" list')
    binary = memoryview(body)[len(header_bytes) :] if header_length is not None else memoryview(b"")
    tensors, used = _decode_inputs(header["inputs"], binary)
    if used != len(binary):
        raise InvalidRequestError(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up to {used}"
        )
    request = InferRequest(tensors=tensors, id=_request_id(header.get("id")))
    request.parameters = _parameters(header.get("parameters"), "request")
    request.binary_default = bool(request.parameters.get("binary_data_output", False))
    _decode_outputs(header.get("outputs"), request)
    return request


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidRequestError(f'"id" must be a string, got {value!r}')


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f'{where} "parameters" must be a JSON object')
    return value


def _decode_inputs(inputs: list[Any], binary: memoryview) -> tuple[dict[str, np.ndarray], int]:
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for spec in inputs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequestError('each input must be an object with a string "name"')
        name = spec["name"]
        shape = check_shape(name, spec.get("shape"))
        params = _parameters(spec.get("parameters"), f"input {name!r}")
        if any(k in params for k in _SHM_KEYS):
            raise InvalidRequestError(f"input {name!r}: shared memory is not supported; send the data inline")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidRequestError(
                    f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} binary bytes"
                )
            tensors[name] = from_raw(name, spec.get("datatype"), shape, binary[offset : offset + size])
            offset += size
        elif "data" in spec:
            tensors[name] = from_json(name, spec.get("datatype"), shape, spec["data"])
        else:
            raise InvalidRequestError(f'input {name!r} has neither "data" nor parameters.binary_data_size')
    return tensors, offset


def _decode_outputs(outputs: Any, request: InferRequest) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise InvalidRequestError('"outputs" must be a list of {"name": ...} objects')
    names = []
    for spec in outputs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequestError('each requested output must be an object with a string "name"')
        params = _parameters(spec.get("parameters"), f"output {spec['name']!r}")
        names.append(spec["name"])
        if "binary_data" in params:
            request.binary_outputs[spec["name"]] = bool(params["binary_data"])
    request.outputs = names


def encode_response(result: InferResult, request: InferRequest) -> tuple[bytes, int | None]:
    """JSON header + binary outputs; returns (body, header length or None when all JSON)."""
    out_specs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in result.outputs.items():
        spec: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if request.binary_outputs.get(name, request.binary_default):
            raw = to_raw(array)
            spec["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            spec["data"] = to_json_data(array)
        out_specs.append(spec)
    header: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id is not None:
        header["id"] = result.id
    if result.parameters:
        header["parameters"] = result.parameters
    header["outputs"] = out_specs
    head = json_codec.dumps(header)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
