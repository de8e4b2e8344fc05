"""Benchmark (not a test): one TorchScript CNN served hosted from a .mar vs served natively.

    .venv/bin/python -m tests.imports.bench_mar [--seconds 10] [--clients 1 8]

(a) ``hosted``: the model in a TorchServe archive, behind a ``BaseHandler`` subclass (TorchServe's
    own initialize / handle / inference), imported with ``deepserve import model.mar``;
(b) ``native``: the same ``model.pt`` in a Triton folder (``platform: "pytorch_libtorch"``),
    imported with ``deepserve import`` and run by deepserve's TorchScript runtime.

Both are called over KServe v2 HTTP with binary tensors through tritonclient, one image
(3x64x64 float32, 48 KiB) per request, in closed loops of 1 and 8 clients against one server
holding both models. Prints requests/s, p50 and p99 per model and client count and the ratio
hosted / native (medians of interleaved loops). Takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from deepserve.imports import ImportOptions, import_source
from tests.e2e.conftest import start_server, stop_server
from tests.imports.archives import build_mar

SHAPE = (3, 64, 64)
MODELS = ("hosted", "native")
CLASSES = 10
HANDLER = '''\
import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler


class TensorHandler(BaseHandler):
    """Each body: one float32 3x64x64 image, raw bytes; each answer: its logits."""

    def preprocess(self, data):
        rows = [np.frombuffer(r.get("data") or r.get("body"), dtype=np.float32) for r in data]
        return torch.from_numpy(np.stack(rows).reshape(len(rows), 3, 64, 64))
'''
CONFIG = f"""\
platform: "pytorch_libtorch"
max_batch_size: 8
input [{{ name: "x", data_type: TYPE_FP32, dims: {list(SHAPE)} }}]
output [{{ name: "logits", data_type: TYPE_FP32, dims: [{CLASSES}] }}]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
"""


def cnn(path: Path) -> Path:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            )  # fmt: skip
            self.head = torch.nn.Linear(64, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 64, 64) -> (B, 10)
            return self.head(self.features(x))

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Net().eval()), str(path))
    return path


def make_store(root: Path) -> Path:
    store = root / "store"
    model = cnn(root / "model.pt")
    (root / "handler.py").write_text(HANDLER)
    mar = build_mar(root, "hosted", str(root / "handler.py"), serialized=model)
    import_source(mar, ImportOptions(store=store))
    triton = root / "native"
    (triton / "1").mkdir(parents=True)
    (triton / "1" / "model.pt").write_bytes(model.read_bytes())
    (triton / "config.pbtxt").write_text(CONFIG)
    import_source(triton, ImportOptions(store=store))
    return store


def request(model: str, image: np.ndarray) -> list[httpclient.InferInput]:
    if model == "hosted":
        inp = httpclient.InferInput("data", [1], "BYTES")
        inp.set_data_from_numpy(np.array([image.tobytes()], dtype=np.object_))
    else:
        inp = httpclient.InferInput("x", [1, *SHAPE], "FP32")
        inp.set_data_from_numpy(image[None])
    return [inp]


def logits(model: str, result: httpclient.InferResult) -> np.ndarray:
    if model == "hosted":
        return np.array(json.loads(result.as_numpy("output")[0]), dtype=np.float32)
    return result.as_numpy("logits")


def closed_loop(url: str, model: str, clients: int, seconds: float) -> dict[str, float]:
    image = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        http = httpclient.InferenceServerClient(url)
        inputs = request(model, image)
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            http.infer(model, inputs)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="one measured loop")
    parser.add_argument("--repeats", type=int, default=3, help="loops per model, interleaved; medians shown")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mar-") as tmp:
        root = Path(tmp)
        store = make_store(root)
        server = start_server(store, root / "server.log")
        try:
            image = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
            http = httpclient.InferenceServerClient(server.http)
            same = [logits(m, http.infer(m, request(m, image))) for m in MODELS]
            np.testing.assert_allclose(same[0], same[1][0], rtol=1e-4, atol=1e-5)  # one model, two ways
            for clients in args.clients:
                for model in MODELS:  # warm-up
                    closed_loop(server.http, model, clients, 2.0)
                runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODELS}
                for rep in range(args.repeats):  # interleaved, so a noisy moment hits both
                    for model in MODELS if rep % 2 == 0 else MODELS[::-1]:
                        runs[model].append(closed_loop(server.http, model, clients, args.seconds))
                rows = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
                for model, row in rows.items():
                    print(f"{clients:>2} clients  {model:<7} {row['rps']:8.1f} req/s  "
                          f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms")  # fmt: skip
                ratio = rows["hosted"]["rps"] / rows["native"]["rps"]
                print(f"{clients:>2} clients  hosted / native throughput: {ratio:.2f}", flush=True)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
