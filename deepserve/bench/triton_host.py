"""Serve a store version's model.onnx with Triton Inference Server through PyTriton (`--compare triton`).

Runs in the PyTriton tools venv (``deepserve.bench.triton_peer`` installs it and starts this file
by path), so it imports only the standard library, numpy, onnxruntime and pytriton, never
deepserve. PyTriton starts its bundled tritonserver (KServe v2 over HTTP and gRPC, Triton's dynamic
batcher) with one Python-backend model whose requests it forwards to ``infer`` below, in this
process: the model's own ONNX Runtime session, the rows of one batch in one run (``@batch``).

    python triton_host.py --version-dir STORE/m/1 --name m --http-port 8100 --grpc-port 8101 \
        --metrics-port 8102 --max-batch 32 --delay-us 100

Before starting it checks that the bundled binaries can load their libraries (``ldd``) and exits 3
with one line naming what is missing, so the bench can say why the peer was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

# started by path: this folder is sys.path[0], and its module names must not shadow anything
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np

# copies of deepserve's own maps on purpose: this script runs in PyTriton's venv, without deepserve
NUMPY_OF_KSERVE = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
                   "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip
_ORT_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
              "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int8)": "INT8",
              "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}  # fmt: skip
_MISSING = re.compile(r"^\s*(\S+) => not found|version `([^']+)' not found", re.M)


def missing_libraries(ldd_output: str) -> list[str]:
    """Libraries (or symbol versions such as GLIBC_2.38) that ``ldd`` could not resolve."""
    return sorted({a or b for a, b in _MISSING.findall(ldd_output)})


def preflight(pytriton_dir: Path) -> str | None:
    """Why the bundled tritonserver or this Python's backend stub cannot load, or None."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    server = pytriton_dir / "tritonserver"
    binaries = [server / "bin" / "tritonserver",
                server / "python_backend_stubs" / version / "triton_python_backend_stub"]  # fmt: skip
    for binary in binaries:
        if not binary.is_file():
            return f"{binary} is not in the PyTriton wheel (Python {version} is not supported)"
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=os.environ)
        missing = missing_libraries(out.stdout + out.stderr)
        if missing:
            return f"{binary.name} cannot load {', '.join(missing)} on this machine"
    return None


def use_own_libpython() -> None:
    """The backend stub links libpython3.X.so.1.0 and, left alone, finds the system's (Debian's 3.11.2
    here) while it imports this interpreter's standard library (3.11.7): the mismatch fails the stub's
    start (``'_thread.RLock' object has no attribute '_recursion_count'``). Put this interpreter's own
    shared libpython first; PyTriton passes LD_LIBRARY_PATH on to tritonserver and the stub."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p
        )


def signature(version_dir: Path, session: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(inputs, outputs, max_batch_size) from model.json, else from the ONNX graph's signature."""
    spec_path = version_dir / "model.json"
    if spec_path.is_file():
        spec = json.loads(spec_path.read_text())
        return spec["inputs"], spec["outputs"], int(spec.get("max_batch_size", 0))

    def tensors(args: Any) -> list[dict[str, Any]]:
        return [{"name": a.name, "datatype": _ORT_TYPES[a.type],
                 "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]  # fmt: skip

    inputs, outputs = tensors(session.get_inputs()), tensors(session.get_outputs())
    batched = all(t["shape"] and t["shape"][0] == -1 for t in inputs)
    return inputs, outputs, 32 if batched else 0


def _session(version_dir: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(version_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def serve(args: argparse.Namespace) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

    session = _session(args.version_dir, args.threads)
    inputs, outputs, model_max = signature(args.version_dir, session)
    out_names = [t["name"] for t in outputs]
    batched = model_max > 0
    skip = 1 if batched else 0

    def tensors(specs: list[dict[str, Any]]) -> list[Any]:
        return [Tensor(name=t["name"], dtype=NUMPY_OF_KSERVE[t["datatype"]], shape=tuple(t["shape"][skip:]))
                for t in specs]  # fmt: skip

    @batch  # type: ignore[untyped-decorator]  # pytriton ships no type hints
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(out_names, session.run(out_names, feeds), strict=True))

    max_batch = min(args.max_batch, model_max) if batched else 0
    config = ModelConfig(batching=batched, max_batch_size=max_batch,
                         batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us))  # fmt: skip
    triton_config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                                 grpc_port=args.grpc_port, metrics_port=args.metrics_port)  # fmt: skip
    # PyTriton puts the statistics API behind an access token; perf_analyzer and the bench read it
    # (loopback only), the other protected APIs stay protected
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # serve() stops cleanly on KeyboardInterrupt
    with Triton(config=triton_config, workspace=args.workspace, security_config=security) as triton:
        triton.bind(model_name=args.name, infer_func=infer, inputs=tensors(inputs), outputs=tensors(outputs),
                    config=config, strict=False)  # fmt: skip
        print(f"triton_host: {args.name} bound (max batch {max_batch}, delay {args.delay_us} us)", flush=True)
        triton.serve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--delay-us", type=int, default=100, help="Triton's max_queue_delay_microseconds")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--workspace", type=Path, default=None, help="PyTriton's sockets and model store")
    args = p.parse_args(argv)
    import pytriton

    use_own_libpython()
    why = preflight(Path(pytriton.__file__).parent)
    if why:
        print(f"triton_host: cannot start: {why}", file=sys.stderr, flush=True)
        return 3
    serve(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
