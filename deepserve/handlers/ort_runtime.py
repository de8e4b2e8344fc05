"""ONNX Runtime backend: explicit providers, threads = the cores this model owns.

Settings follow export-feasibility section 7: ``intra_op_num_threads`` = cores, ``ORT_SEQUENTIAL``
(parallel mode over-subscribes 2 cores), ``ORT_ENABLE_ALL`` (halves CNN latency) except for fp16
graphs, where the NCHWc layout pass segfaults at session creation (onnxruntime#28392), so it is
disabled there. Spinning is configurable: off frees the CPU for a co-located HTTP server.

On a GPU the chain is TensorRT, then CUDA, then CPU (``providers_for``). TensorRT gets a
``TensorrtPlan`` (deepserve.handlers.trt_plan): fp16 for an fp16 variant, an engine and timing
cache in a folder keyed by the model file's hash and the GPU, and an optimisation profile from
the model's dynamic axes. ``provider`` is what the session really registered first: ORT drops a
provider it cannot create (TensorRT libraries missing) and logs it, so a silent fallback to CUDA
or CPU shows there, in the load log line and in ``deepserve_model_provider_info``.

On CUDA or TensorRT, ``run`` goes through an IOBinding (deepserve.handlers.io_binding): one copy
to the device per input, one back per output. On the CPU it stays a plain ``session.run``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deepserve.handlers.base import ModelLoadError
from deepserve.handlers.io_binding import DeviceBinding, binding_device
from deepserve.handlers.ort_threads import ORT_DTYPES, fewer_threads_if_faster
from deepserve.handlers.runtime import Runtime, device_index, is_cuda
from deepserve.handlers.trt_plan import TensorrtPlan, plan_tensorrt
from deepserve.store import ModelSpec, Variant

log = logging.getLogger(__name__)

FP16_DISABLED_OPTIMIZERS = ["NchwcTransformer"]


def tensorrt_options(device_id: int, plan: TensorrtPlan) -> dict[str, Any]:
    """The TensorRT provider's options for one model file (names as onnxruntime documents them)."""
    options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": plan.fp16}
    if plan.cache_dir is not None:
        options |= {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(plan.cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(plan.cache_dir),
        }
    if plan.profile is not None:
        options["trt_profile_min_shapes"] = plan.profile.min_shapes
        options["trt_profile_opt_shapes"] = plan.profile.opt_shapes
        options["trt_profile_max_shapes"] = plan.profile.max_shapes
    return options


def cuda_options(device_id: int) -> dict[str, Any]:
    """HEURISTIC, not ORT's EXHAUSTIVE default: the batcher makes many batch shapes, and an
    exhaustive cuDNN search on each new one stalls the first request at that size. Copies stay on
    the default stream, ordered with the compute (needed while inputs come from host numpy)."""
    return {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": True}


def providers_for(device: str, available: list[str], tensorrt: TensorrtPlan | None = None) -> list[Any]:
    """TensorRT, then CUDA, then CPU on a GPU device; CPU alone otherwise. Always explicit.

    ``tensorrt``: the model's TensorRT plan; without one (no model at hand) every GPU provider
    gets only its device id, ORT's defaults otherwise.
    """
    if not is_cuda(device):
        return ["CPUExecutionProvider"]
    device_id = device_index(device)
    chosen: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        trt = tensorrt_options(device_id, tensorrt) if tensorrt is not None else {"device_id": device_id}
        chosen.append(("TensorrtExecutionProvider", trt))
    if "CUDAExecutionProvider" in available:
        cuda = cuda_options(device_id) if tensorrt is not None else {"device_id": device_id}
        chosen.append(("CUDAExecutionProvider", cuda))
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
    def __init__(
        self,
        path: Path,
        variant: Variant,
        *,
        device: str,
        threads: int,
        spinning: bool,
        spec: ModelSpec | None = None,
        max_batch_size: int | None = None,
        trt_cache_root: Path | None = None,
        bind_on: str | None = None,
        fit_threads: bool = False,
    ) -> None:
        """``spec`` (model.json), ``max_batch_size`` (the batcher's largest batch, default the
        model's) and ``trt_cache_root`` (default ~/.cache/deepserve/trt) shape the TensorRT plan.
        ``bind_on``: force an IOBinding on this ORT device type ('cpu' in tests); default: bind on
        the device of the provider the session really runs on, none on the CPU provider.
        ``fit_threads``: ``threads`` is a ceiling, not an order; a small graph on the CPU provider
        keeps one thread when that is faster (deepserve.handlers.ort_threads)."""
        import onnxruntime as ort

        self.path, self.variant, self.threads = path, variant, threads
        disabled = FP16_DISABLED_OPTIMIZERS if variant.precision == "fp16" else None
        available = ort.get_available_providers()
        plan = None
        if spec is not None and is_cuda(device) and "TensorrtExecutionProvider" in available:
            plan = plan_tensorrt(path, variant, spec, device_id=device_index(device),
                                 max_batch_size=max_batch_size, cache_root=trt_cache_root)  # fmt: skip
        self.providers_asked = providers_for(device, available, plan)

        def make_session(n_threads: int) -> Any:
            try:
                return ort.InferenceSession(
                    str(path),
                    session_options(variant, threads=n_threads, spinning=spinning),
                    providers=self.providers_asked,
                    disabled_optimizers=disabled,
                )
            except Exception as exc:  # ORT raises its own untyped errors for corrupt files
                raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}; re-export the model") from exc

        self.session = make_session(threads)
        if fit_threads and self.provider == "CPUExecutionProvider":
            self.session, self.threads, why = fewer_threads_if_faster(self.session, threads, make_session)
            if why is not None:
                log.info("%s: %d intra-op thread(s): %s", path.name, self.threads, why)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_dtypes = {i.name: ORT_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self.binding = self._binding(bind_on or binding_device(self.provider), device_index(device))
        self._log_provider(plan)

    def _binding(self, device_type: str | None, device_id: int) -> DeviceBinding | None:
        if device_type is None:
            return None
        return DeviceBinding(self.session, self.output_names, device_type=device_type, device_id=device_id)

    def _log_provider(self, plan: TensorrtPlan | None) -> None:
        first_asked = _provider_name(self.providers_asked[0])
        if self.provider != first_asked:  # e.g. TensorRT asked, its libraries absent: CUDA runs it
            log.warning("%s runs on %s, not on %s (ORT could not create it; see its log above)",
                        self.path.name, self.provider, first_asked)  # fmt: skip
        if plan is not None and self.provider == "TensorrtExecutionProvider":
            log.info("%s: TensorRT engine cache %s", self.path.name, plan.cache_dir)
        log.info("%s", self.describe())

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {name: self._cast(name, array) for name, array in feeds.items()}
        if self.binding is not None:  # CUDA/TensorRT: one copy each way (module docstring)
            results = self.binding.run(cast)
        else:
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
            + (f", io_binding={self.binding.device_type}" if self.binding is not None else "")
        )


def _provider_name(entry: Any) -> str:
    return str(entry[0] if isinstance(entry, tuple) else entry)


def _to_served(array: Any) -> np.ndarray:
    """Outputs are served as FP32 whatever precision the graph computed in."""
    out = np.asarray(array)
    return out.astype(np.float32) if out.dtype == np.float16 else out
