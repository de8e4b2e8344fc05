"""The server's own account of a level: deltas of GET /v2/models/{m}/stats (Triton statistics JSON).

Read at the start and the end of the measured phase; the difference gives the executions, rows
per executed batch, mean queue time and mean compute time of exactly that phase.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document (blocking; for metadata and health, outside the measured phase)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


async def get_json(host: str, port: int, path: str, timeout: float = 5.0) -> Any:
    """GET a JSON document without blocking the load generator's event loop; None on failure."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(-1), timeout)
        writer.close()
    except (OSError, TimeoutError):
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    if head[9:12] != b"200":
        return None
    if b"chunked" in head.lower():
        body = _dechunk(body)
    try:
        return json.loads(body)
    except ValueError:
        return None


def _dechunk(body: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        eol = body.find(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16) if eol >= 0 else 0
        if size == 0:
            return out
        out += body[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def _entry(doc: Any, model: str) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    entries = [e for e in doc.get("model_stats", []) if e.get("name") == model]
    return max(entries, key=lambda e: int(e.get("inference_count", 0))) if entries else None


def _num(entry: dict[str, Any], *keys: str) -> int:
    value: Any = entry
    for k in keys:
        value = value.get(k, {}) if isinstance(value, dict) else {}
    return int(value) if isinstance(value, int | float | str) and str(value).isdigit() else 0


def stats_delta(before: Any, after: Any, model: str) -> dict[str, float] | None:
    """Server-side breakdown between two stats documents; None if the server gave none."""
    b, a = _entry(before, model), _entry(after, model)
    if a is None:
        return None
    b = b or {}
    d = {k: _num(a, k) - _num(b, k) for k in ("inference_count", "execution_count")}
    for k in _DURATIONS:
        d[f"{k}_count"] = _num(a, "inference_stats", k, "count") - _num(b, "inference_stats", k, "count")
        d[f"{k}_ns"] = _num(a, "inference_stats", k, "ns") - _num(b, "inference_stats", k, "ns")

    def mean_ms(k: str) -> float:
        return d[f"{k}_ns"] / d[f"{k}_count"] / 1e6 if d[f"{k}_count"] else float("nan")

    return {
        "executions": float(d["execution_count"]),
        "rows": float(d["inference_count"]),
        "avg_batch": d["inference_count"] / d["execution_count"] if d["execution_count"] else float("nan"),
        "queue_ms": mean_ms("queue"),
        "compute_ms": mean_ms("compute_infer"),
        "compute_io_ms": mean_ms("compute_input") + mean_ms("compute_output"),
        "success_ms": mean_ms("success"),
        "server_failures": float(d["fail_count"]),
    }


def model_metadata(url: str, model: str) -> dict[str, Any] | None:
    try:
        doc = fetch_json(f"{url}/v2/models/{model}")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def model_config(url: str, model: str) -> dict[str, Any]:
    """Triton's model config as JSON; empty when the server has no config route."""
    try:
        doc = fetch_json(f"{url}/v2/models/{model}/config")
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
