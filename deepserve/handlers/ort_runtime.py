"""ONNX Runtime backend: explicit providers, threads = the cores this model owns.

Settings follow export-feasibility section 7: ``intra_op_num_threads`` = cores, ``ORT_SEQUENTIAL``
(parallel mode over-subscribes 2 cores), ``ORT_ENABLE_ALL`` (halves CNN latency) except for fp16
graphs, where the NCHWc layout pass segfaults at session creation (onnxruntime#28392), so it is
disabled there. Spinning is configurable: off frees the CPU for a co-located HTTP server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deepserve.handlers.base import ModelLoadError
from deepserve.handlers.runtime import Runtime, is_cuda
from deepserve.store import Variant

log = logging.getLogger(__name__)

FP16_DISABLED_OPTIMIZERS = ["NchwcTransformer"]

# ONNX type strings -> numpy dtypes for the inputs a deepserve graph can have.
_ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


def providers_for(device: str, available: list[str]) -> list[Any]:
    """TensorRT, then CUDA, then CPU on a GPU device; CPU alone otherwise. Always explicit."""
    if not is_cuda(device):
        return ["CPUExecutionProvider"]
    device_id = int(device.split(":", 1)[1]) if ":" in device else 0
    chosen: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        chosen.append(("TensorrtExecutionProvider", {"device_id": device_id}))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
    return [*chosen, "CPUExecutionProvider"]


def session_options(variant: Variant, *, threads: int, spinning: bool) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


class OrtRuntime(Runtime):
    def __init__(self, path: Path, variant: Variant, *, device: str, threads: int, spinning: bool) -> None:
        import onnxruntime as ort

        self.path, self.variant, self.threads = path, variant, threads
        disabled = FP16_DISABLED_OPTIMIZERS if variant.precision == "fp16" else None
        try:
            self.session = ort.InferenceSession(
                str(path),
                session_options(variant, threads=threads, spinning=spinning),
                providers=providers_for(device, ort.get_available_providers()),
                disabled_optimizers=disabled,
            )
        except Exception as exc:  # ORT raises its own untyped errors for corrupt files
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}; re-export the model") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_dtypes = {i.name: _ORT_DTYPES.get(i.type) for i in self.session.get_inputs()}
        log.info("%s", self.describe())

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {name: self._cast(name, array) for name, array in feeds.items()}
        results = self.session.run(self.output_names, cast)
        return {name: _to_served(out) for name, out in zip(self.output_names, results, strict=True)}

    def _cast(self, name: str, array: np.ndarray) -> np.ndarray:
        """fp32 IO files (keep_io_types) take float32; native fp16 files take float16."""
        want = self._input_dtypes.get(name)  # np.require, not ascontiguousarray: a 0-d feed stays 0-d
        return np.require(array, dtype=want if want is not None else array.dtype, requirements="C")

    def describe(self) -> str:
        return (
            f"onnxruntime {self.path.name} ({self.variant.precision}) on {self.provider}, "
            f"intra_op_threads={self.threads}"
        )


def _to_served(array: Any) -> np.ndarray:
    """Outputs are served as FP32 whatever precision the graph computed in."""
    out = np.asarray(array)
    return out.astype(np.float32) if out.dtype == np.float16 else out
