"""Request bytes, encoded once before a run so the load generator only writes them.

KServe v2 infer bodies in JSON or with the binary tensor extension (JSON header, then the raw
tensors in header order, ``Inference-Header-Content-Length``: github.com/triton-inference-server/
server, docs/protocol/extension_binary_data.md), the complete HTTP/1.1 request around them, and
serialized gRPC ``ModelInferRequest`` messages (raw_input_contents,
as tritonclient and perf_analyzer send them).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

Sample = dict[str, np.ndarray]  # input name -> array, batch dim first

_DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
    np.dtype(object): "BYTES",
}


def datatype_of(array: np.ndarray) -> str:
    try:
        return _DATATYPES[array.dtype]
    except KeyError:
        raise ValueError(f"no KServe v2 datatype for numpy dtype {array.dtype}") from None


def tensor_bytes(array: np.ndarray) -> bytes:
    """Binary tensor encoding: little-endian row-major; BYTES = uint32 length + bytes per element."""
    if array.dtype == object:
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _json_data(array: np.ndarray) -> list[Any]:
    if array.dtype == object:
        return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    return array.reshape(-1).tolist()


def infer_json(sample: Mapping[str, np.ndarray]) -> bytes:
    """A v2 infer body with every tensor as JSON data; all outputs returned as JSON."""
    inputs = [
        {"name": n, "shape": list(a.shape), "datatype": datatype_of(a), "data": _json_data(a)}
        for n, a in sample.items()
    ]
    return json.dumps({"inputs": inputs}, separators=(",", ":")).encode()


def infer_binary(sample: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    """(body, header length): JSON header + raw tensors; outputs requested as binary too."""
    blobs = [tensor_bytes(a) for a in sample.values()]
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": datatype_of(a),
            "parameters": {"binary_data_size": len(b)},
        }
        for (n, a), b in zip(sample.items(), blobs, strict=True)
    ]
    header = json.dumps(
        {"inputs": inputs, "parameters": {"binary_data_output": True}}, separators=(",", ":")
    ).encode()
    return header + b"".join(blobs), len(header)


def http_request(
    method: str, path: str, host: str, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> bytes:
    """A complete keep-alive HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def infer_http_request(model: str, host: str, sample: Mapping[str, np.ndarray], fmt: str) -> bytes:
    path = f"/v2/models/{model}/infer"
    if fmt == "json":
        return http_request("POST", path, host, infer_json(sample), {"Content-Type": "application/json"})
    if fmt == "binary":
        body, header_len = infer_binary(sample)
        return http_request(
            "POST",
            path,
            host,
            body,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_len)},
        )
    raise ValueError(f"unknown format {fmt!r}: use json or binary")


def infer_grpc_request(model: str, sample: Mapping[str, np.ndarray]) -> bytes:
    """A serialized inference.ModelInferRequest with raw_input_contents (no typed contents)."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=model)
    for name, array in sample.items():
        tensor = req.inputs.add(name=name, datatype=datatype_of(array))
        tensor.shape.extend(array.shape)
        req.raw_input_contents.append(tensor_bytes(array))
    return req.SerializeToString()


def completion_request(model: str, host: str, prompt: str, max_tokens: int, stream: bool = True) -> bytes:
    """An OpenAI-style /v1/completions request (SSE stream with a final usage chunk)."""
    payload: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": 0,
        "stream": stream,
    }
    if stream:
        payload["stream_options"] = {"include_usage": True}
    return http_request(
        "POST", "/v1/completions", host, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
