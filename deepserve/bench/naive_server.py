"""The naive baseline: a plain FastAPI endpoint, one request -> one ONNX Runtime run, no batching.

It speaks the same KServe v2 infer route (JSON and binary tensors) as deepserve, so the bench sends
the very same request bytes to both, and answers the model metadata and config routes that
perf_analyzer reads before it drives a server (from the ONNX signature and model.json's
max_batch_size). This is what most teams write first; the classifiers suite asks deepserve to beat
it. Run:
``python -m deepserve.bench.naive_server --version-dir STORE/m/1 --name m --port 8100``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response

from deepserve.bench.inputs import NUMPY_DTYPES
from deepserve.imports.graph_file import ORT_DATATYPES

_KSERVE = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}


def decode_inputs(body: bytes, header_len: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(name -> array, request JSON) from a v2 infer body, JSON or binary-extension."""
    header = json.loads(body[:header_len] if header_len else body)
    offset, feeds = header_len or 0, {}
    for t in header["inputs"]:
        dtype, shape = NUMPY_DTYPES[t["datatype"]], t["shape"]
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            feeds[t["name"]] = np.frombuffer(body, dtype, count=int(np.prod(shape)), offset=offset).reshape(
                shape
            )
            offset += size
        else:
            feeds[t["name"]] = np.asarray(t["data"], dtype).reshape(shape)
    return feeds, header


def encode_outputs(names: list[str], arrays: list[np.ndarray], binary: bool) -> tuple[bytes, int | None]:
    """(body, binary header length or None) for a v2 infer response."""
    outs, blobs = [], []
    for name, a in zip(names, arrays, strict=True):
        entry: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": _KSERVE[a.dtype]}
        if binary:
            blobs.append(np.ascontiguousarray(a).tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = a.reshape(-1).tolist()
        outs.append(entry)
    head = json.dumps({"model_name": "naive", "outputs": outs}).encode()
    return (head + b"".join(blobs), len(head)) if binary else (head, None)


def signature(sess: Any, name: str, max_batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(v2 model metadata, Triton model config) of the session's graph: what perf_analyzer reads."""

    def tensors(args: Any) -> list[dict[str, Any]]:
        return [{"name": a.name, "datatype": ORT_DATATYPES.get(a.type, "BYTES"),
                 "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]  # fmt: skip

    inputs, outputs = tensors(sess.get_inputs()), tensors(sess.get_outputs())
    skip = 1 if max_batch_size > 0 else 0

    def config(t: dict[str, Any]) -> dict[str, Any]:
        return {"name": t["name"], "data_type": f"TYPE_{t['datatype']}", "dims": t["shape"][skip:]}

    metadata = {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx", "inputs": inputs,
                "outputs": outputs}  # fmt: skip
    cfg = {"name": name, "platform": "onnxruntime_onnx", "max_batch_size": max_batch_size,
           "input": [config(t) for t in inputs], "output": [config(t) for t in outputs]}  # fmt: skip
    return metadata, cfg


def _max_batch_size(version_dir: Path) -> int:
    spec = version_dir / "model.json"
    return int(json.loads(spec.read_text()).get("max_batch_size", 0)) if spec.is_file() else 0


def _session(version_dir: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(version_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def create_app(version_dir: Path, name: str, threads: int | None = None) -> FastAPI:
    sess = _session(version_dir, threads)
    out_names = [o.name for o in sess.get_outputs()]
    metadata, config = signature(sess, name, _max_batch_size(version_dir))
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "naive-fastapi", "version": "0", "extensions": []}

    @app.get("/v2/models/{model}")
    async def model_metadata(model: str) -> dict[str, Any]:
        return metadata

    @app.get("/v2/models/{model}/config")
    async def model_config(model: str) -> dict[str, Any]:
        return config

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        hlen = request.headers.get("inference-header-content-length")
        feeds, header = decode_inputs(await request.body(), int(hlen) if hlen else None)
        arrays = sess.run(out_names, feeds)  # blocks the loop: the naive baseline does exactly this
        binary = bool((header.get("parameters") or {}).get("binary_data_output"))
        body, head_len = encode_outputs(out_names, arrays, binary)
        if head_len is None:
            return Response(body, media_type="application/json")
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(head_len)},
        )

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--version-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    uvicorn.run(
        create_app(args.version_dir, args.name, args.threads),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
