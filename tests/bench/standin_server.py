"""A tiny stand-in for `deepserve serve` speaking just what the bench calls.

Models: ``tiny`` (features FP32 [-1, 4] -> logits FP32 [-1, 2], a row sum), ``broken`` (same
signature, answers 500 to every other request), ``gen`` (text-generation: /v1/completions SSE with
five tokens 2 ms apart and a usage chunk). KServe v2 infer in JSON and binary, Triton stats.
Run: ``python standin_server.py HTTP_PORT [GRPC_PORT]`` (gRPC: ModelInfer only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse


class _Grpc:
    """ModelInfer only: raw FP32 rows in, a row sum out (the same arithmetic as the HTTP route)."""

    @staticmethod
    async def serve(port: int) -> object:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
            async def ModelInfer(self, request, context):
                t0 = time.perf_counter_ns()
                if request.model_name not in STATS:
                    await context.abort(grpc.StatusCode.NOT_FOUND, "unknown model")
                shape = list(request.inputs[0].shape)
                x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(shape)
                y = np.stack([x.sum(1), -x.sum(1)], 1).astype(np.float32)
                _record(request.model_name, x.shape[0], t0)
                resp = service_pb2.ModelInferResponse(model_name=request.model_name)
                resp.outputs.add(name="logits", datatype="FP32", shape=list(y.shape))
                resp.raw_output_contents.append(y.tobytes())
                return resp

        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        return server


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    server = await _Grpc.serve(int(sys.argv[2])) if len(sys.argv) > 2 else None
    yield
    if server is not None:
        await server.stop(0)


app = FastAPI(lifespan=lifespan)
SIG = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
}
GEN_SIG = {
    "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
}
STATS = {
    m: {"inference_count": 0, "execution_count": 0, "success": [0, 0], "queue": [0, 0], "infer": [0, 0]}
    for m in ("tiny", "broken", "gen")
}
CALLS = {"broken": 0}


@app.get("/v2/health/ready")
async def ready() -> Response:
    return Response(status_code=200)


@app.get("/v2/models/{model}")
async def metadata(model: str) -> Response:
    if model not in STATS:
        return Response(json.dumps({"error": f"unknown model {model}"}), status_code=404)
    sig = GEN_SIG if model == "gen" else SIG
    return Response(
        json.dumps({"name": model, "versions": ["1"], "platform": "onnxruntime", **sig}),
        media_type="application/json",
    )


def _record(model: str, rows: int, t0: int) -> None:
    s, dt = STATS[model], time.perf_counter_ns() - t0
    s["inference_count"] += rows
    s["execution_count"] += 1
    for k, ns in (("success", dt), ("queue", 1000), ("infer", dt - 1000)):
        s[k][0] += 1
        s[k][1] += ns


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request) -> Response:
    t0 = time.perf_counter_ns()
    body = await request.body()
    if model == "broken":
        CALLS["broken"] += 1
        if CALLS["broken"] % 2 == 0:
            return Response(json.dumps({"error": "stand-in failure"}), status_code=500)
    hlen = request.headers.get("inference-header-content-length")
    header = json.loads(body[: int(hlen)] if hlen else body)
    t = header["inputs"][0]
    if "data" in t:
        x = np.asarray(t["data"], np.float32).reshape(t["shape"])
    else:
        x = np.frombuffer(body, np.float32, offset=int(hlen)).reshape(t["shape"])
    y = np.stack([x.sum(1), -x.sum(1)], 1)
    _record(model, x.shape[0], t0)
    out = {
        "model_name": model,
        "outputs": [
            {"name": "logits", "shape": list(y.shape), "datatype": "FP32", "data": y.reshape(-1).tolist()}
        ],
    }
    return Response(json.dumps(out), media_type="application/json")


def _stat(s: dict, key: str) -> dict:
    return {"count": s[key][0], "ns": s[key][1]}


@app.get("/v2/models/{model}/stats")
async def stats(model: str) -> Response:
    s = STATS[model]
    inf = {
        "success": _stat(s, "success"),
        "fail": {"count": 0, "ns": 0},
        "queue": _stat(s, "queue"),
        "compute_input": {"count": s["infer"][0], "ns": 0},
        "compute_infer": _stat(s, "infer"),
        "compute_output": {"count": s["infer"][0], "ns": 0},
    }
    entry = {
        "name": model,
        "version": "1",
        "inference_count": s["inference_count"],
        "execution_count": s["execution_count"],
        "inference_stats": inf,
    }
    return Response(json.dumps({"model_stats": [entry]}), media_type="application/json")


@app.post("/v1/completions")
async def completions(request: Request) -> StreamingResponse:
    req = await request.json()

    async def events():
        for i in range(5):
            await asyncio.sleep(0.002)
            chunk = {
                "object": "text_completion",
                "choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': 5}})}\n\n"
        yield "data: [DONE]\n\n"

    assert req["stream"] is True
    return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
