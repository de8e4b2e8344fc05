"""KServe v2 infer bodies for the reliability tests: JSON, the binary extension, and raw HTTP requests."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tests.reliability.load import request_bytes
from tests.reliability.store import EMBED, IMAGE, sample_rows, spec_of


def v2_json(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def v2_binary(tensors: list[tuple[str, str, list[int], bytes]], **header: Any) -> tuple[bytes, int]:
    """(body, Inference-Header-Content-Length) for inputs sent as raw bytes after the JSON header."""
    inputs = [
        {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
        for n, d, s, raw in tensors
    ]
    head = json.dumps({"inputs": inputs, **header}).encode()
    return head + b"".join(raw for *_, raw in tensors), len(head)


def bytes_elements(items: list[bytes]) -> bytes:
    """BYTES tensor layout: each element prefixed by its little-endian uint32 length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def batch_rows(base_url: str, model: str) -> int:
    """Rows per load-test request: a full batch for images (compute-heavy), 4 texts, else 1 row."""
    import httpx

    config = httpx.get(f"{base_url}/v2/models/{model}/config", timeout=10).json()
    return {IMAGE: int(config["max_batch_size"]), EMBED: 4}.get(model, 1)


def model_request(store: Path, model: str, rows: int, address: str) -> bytes:
    """A raw HTTP request that infers ``rows`` valid rows on ``model`` (binary pixels, JSON otherwise)."""
    path = f"/v2/models/{model}/infer"
    if model == EMBED:
        body = v2_json("text", "BYTES", [rows], ["the server holds under load"] * rows)
        return request_bytes(address, "POST", path, body, {"Content-Type": "application/json"})
    first = spec_of(store, model)["inputs"][0]
    array = sample_rows(store, model, rows)
    if array.ndim > 2:  # images: the binary extension, as perf_analyzer sends them
        body, head = v2_binary([(first["name"], "FP32", list(array.shape), array.astype("<f4").tobytes())])
        headers = {"Inference-Header-Content-Length": str(head), "Content-Type": "application/octet-stream"}
        return request_bytes(address, "POST", path, body, headers)
    body = v2_json(first["name"], "FP32", list(array.shape), np.round(array, 4).reshape(-1).tolist())
    return request_bytes(address, "POST", path, body, {"Content-Type": "application/json"})
