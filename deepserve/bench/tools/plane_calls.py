"""What one KServe v2 call costs the data plane itself, with no transport: sequential awaited calls.

Builds a ``DataPlane`` over a store on uvloop, as ``deepserve serve`` does, and times one JSON
request at a time through it: decode, ``Call`` (admission, metrics), the batcher (inline for a
proven-tiny model), the handler and the encode. HTTP or gRPC add their own cost on top; the
naive-endpoint comparison in the bench shows how much.

    python -m deepserve.bench.tools.plane_calls --store /tmp/bstore --model bench-mlp --calls 5000

Run it under ``py-spy record -f raw`` to see where the microseconds go.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deepserve.service.dataplane import DataPlane
from deepserve.service.settings import Settings
from deepserve.service.v2_codec import decode_request, encode_response


def request_body(plane: DataPlane, model: str) -> bytes:
    """A v2 JSON request of one row of 0.1s for each of the model's inputs."""
    inputs = []
    for tensor in plane.model_metadata(model, None)["inputs"]:
        shape = [1 if d < 0 else int(d) for d in tensor["shape"]]
        inputs.append({"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"],
                       "data": np.full(shape, 0.1).reshape(-1).tolist()})  # fmt: skip
    return json.dumps({"inputs": inputs}).encode()


async def time_calls(store: Path, model: str, calls: int, warmup: int) -> float:
    """Mean microseconds per sequential call."""
    plane = DataPlane(Settings(model_store=store))
    await plane.start()
    await plane.loaded()
    body = request_body(plane, model)

    async def one() -> bytes:
        with plane.guard(None, trusted=True), plane.call(model, None, "v2-http") as call:
            request = decode_request(body, None)
            payload, _ = encode_response(await call.infer(request), request)
            return payload

    try:
        for _ in range(warmup):
            await one()
        start = time.perf_counter()
        for _ in range(calls):
            await one()
        return (time.perf_counter() - start) / calls * 1e6
    finally:
        await plane.stop()


def main(argv: list[str] | None = None) -> int:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=500)
    args = p.parse_args(argv)
    mean_us = uvloop.run(time_calls(args.store, args.model, args.calls, args.warmup))
    print(f"{args.model}: {mean_us:.1f} us per call ({args.calls} sequential calls, no transport)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
