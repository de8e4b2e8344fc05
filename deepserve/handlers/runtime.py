"""Which file of a model-store version runs, and the one call every backend answers.

    variant = select_variant(spec, device="cpu")             # fp32 ONNX on CPU by default
    runtime = open_runtime(version_dir, variant, threads=2)  # ONNX Runtime / TorchScript / torch.export / HF
    outputs = runtime.run({"pixels": x})                     # numpy in, numpy out, names per model.json

Selection rules (``select_variant``):
- only variants whose parity passed (``usable``) and whose file exists are candidates;
- precision: the override if given, else fp16 then fp32 on CUDA, fp32 on CPU (fp16 gives no CPU
  speed-up, export-feasibility section 4); int8 / bf16 only on request, or when a version has
  nothing else (an imported fp16 graph);
- format: the override if given, else ONNX first, then torch.export (.pt2), then TorchScript (.pt),
  then a Hugging Face folder run by transformers (``deepserve import --runtime torch``); on CUDA,
  ONNX only when ONNX Runtime offers a GPU execution provider;
- only formats whose backend is installed: a serving install (``deepserve[serve]`` / ``[gpu]``) has
  ONNX Runtime and no torch, so a model with only torch files fails with the command that fixes it.

The eager fallback (``open_eager``) is not a variant: it rebuilds the model from the checkpoint
recorded in model.json ``source`` and is used on request (``runtime="eager"``) or when no
variant file can be used.
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np

from deepserve.handlers.base import ModelLoadError
from deepserve.store import ModelSpec, Precision, Variant

RuntimeName = Literal["onnx", "torchscript", "pt2", "transformers", "eager"]
Format = Literal["onnx", "torchscript", "pt2", "transformers"]
_FORMAT_ORDER: tuple[Format, ...] = ("onnx", "pt2", "torchscript", "transformers")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TORCH_HINT = "install torch: pip install 'deepserve[train]'"
TRANSFORMERS_HINT = "install torch and transformers: pip install 'deepserve[hf]'"
ORT_HINT = "install ONNX Runtime: pip install 'deepserve[serve]' (CPU) or 'deepserve[gpu]' (CUDA), not both"


class Runtime(ABC):
    """One loaded graph. ``run`` takes and returns numpy arrays keyed by graph I/O names."""

    input_names: list[str]
    output_names: list[str]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def describe(self) -> str: ...

    @property
    def provider(self) -> str:
        """Where the graph really runs: an ORT provider name (``CUDAExecutionProvider``) or
        ``torch-cpu`` / ``torch-cuda``; ``unknown`` for a runtime that does not say."""
        return "unknown"


def runtime_provider(handler: object) -> str:
    """The provider of a loaded handler's runtime (``deepserve_model_provider_info``); user
    handlers that hold no deepserve runtime report ``unknown``."""
    try:
        runtime = getattr(handler, "runtime", None)
    except ModelLoadError:  # a graph handler not loaded yet
        return "unknown"
    return runtime.provider if isinstance(runtime, Runtime) else "unknown"


def default_threads() -> int:
    """The cores this process may use (cgroup / affinity aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def device_index(device: str) -> int:
    """The GPU number of ``cuda:N`` (plain ``cuda`` is 0)."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def torch_available() -> bool:
    """Whether torch is installed (without importing it: a serving process never loads it for ONNX)."""
    return importlib.util.find_spec("torch") is not None


def transformers_available() -> bool:
    return torch_available() and importlib.util.find_spec("transformers") is not None


def ort_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def ort_gpu_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return any(p in ort.get_available_providers() for p in GPU_PROVIDERS)


def _candidates(spec: ModelSpec, version_dir: Path | None) -> list[Variant]:
    def exists(v: Variant) -> bool:
        return version_dir is None or _file_exists(version_dir / v.file, v.format)

    return [v for v in spec.variants if v.usable and exists(v)]


def _precisions(device: str, precision: str | None) -> list[Precision]:
    if precision is not None:
        known: dict[str, Precision] = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8"}
        if precision not in known:
            raise ModelLoadError(f"unknown precision {precision!r}; choose one of fp32, fp16, bf16, int8")
        return [known[precision]]
    return ["fp16", "fp32"] if is_cuda(device) else ["fp32"]


def _formats(device: str, runtime: str | None) -> list[Format]:
    if runtime is not None:
        chosen = [f for f in _FORMAT_ORDER if f == runtime]
        if not chosen:
            raise ModelLoadError(
                f"unknown runtime {runtime!r}; choose one of onnx, pt2, torchscript, transformers, eager"
            )
        return chosen
    if is_cuda(device) and not ort_gpu_available():
        return ["pt2", "torchscript", "transformers"]  # this ONNX Runtime cannot use the GPU: torch only
    return list(_FORMAT_ORDER)


def _installed(fmt: str) -> bool:
    if fmt == "onnx":
        return ort_available()
    return transformers_available() if fmt == "transformers" else torch_available()


def _file_exists(path: Path, fmt: str) -> bool:
    """A "transformers" variant is a folder (config.json + weights + tokenizer files)."""
    return path.is_dir() if fmt == "transformers" else path.is_file()


def _pick(candidates: list[Variant], precisions: list[Precision], formats: list[Format]) -> Variant | None:
    for prec in precisions:
        for fmt in formats:
            found = next((v for v in candidates if v.format == fmt and v.precision == prec), None)
            if found is not None:
                return found
    return None


def missing_backend(spec: ModelSpec, variant: Variant, *, onnx_elsewhere: bool = False) -> str:
    """Why ``variant`` cannot run in this install and what to install (empty when it can).

    ``onnx_elsewhere``: the model has ONNX files too, but not for this device / override.
    """
    if _installed(variant.format):
        return ""
    model = f"model {spec.name} v{spec.version}"
    if variant.format == "onnx":
        return f"{model} needs ONNX Runtime for {variant.file}; {ORT_HINT}"
    if variant.format == "transformers":
        return f"{model} is a Hugging Face folder ({variant.file}/) run by transformers; {TRANSFORMERS_HINT}"
    if onnx_elsewhere:
        return (
            f"{model} needs torch for {variant.file} here ({TORCH_HINT}); its ONNX variants need "
            "runtime='onnx', or on a GPU an onnxruntime with a CUDA provider ('deepserve[gpu]')"
        )
    return f"{model} has only TorchScript/torch.export variants; {TORCH_HINT}"


def select_variant(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    precision: str | None = None,
    runtime: str | None = None,
    version_dir: Path | None = None,
) -> Variant:
    """The variant to serve (rules in the module docstring); never one whose parity failed.

    ``version_dir``, when given, also drops variants whose file is missing.
    """
    candidates = _candidates(spec, version_dir)
    precisions, formats = _precisions(device, precision), _formats(device, runtime)
    installed = [f for f in formats if _installed(f)]
    found = _pick(candidates, precisions, installed)
    if found is None and precision is None:  # e.g. an imported fp16-only graph on CPU: it is what there is
        found = _pick(candidates, ["fp32", "fp16", "bf16", "int8"], installed)
    if found is not None:
        return found
    needs = _pick(candidates, precisions, formats)  # what would serve, were its backend installed
    if needs is not None:
        onnx_elsewhere = any(v.format == "onnx" for v in candidates)
        raise ModelLoadError(missing_backend(spec, needs, onnx_elsewhere=onnx_elsewhere))
    listing = "; ".join(
        f"{v.file} ({v.format}/{v.precision}, {'usable' if v.usable else 'unusable: ' + str(v.reason)})"
        for v in spec.variants
    )
    raise ModelLoadError(
        f"{spec.name} v{spec.version}: no usable variant for device={device} precision={precision or 'auto'} "
        f"runtime={runtime or 'auto'}; variants: {listing or 'none'}. Re-export or change the override."
    )


def open_runtime(
    version_dir: Path,
    variant: Variant,
    *,
    device: str = "cpu",
    threads: int | None = None,
    spinning: bool = True,
    max_batch_size: int | None = None,
    trt_cache_root: Path | None = None,
) -> Runtime:
    """Load ``variant``'s file with its backend; ``threads`` = cores this model may use (None: all
    of them, or one for a small ONNX graph on the CPU that runs faster so: handlers.ort_threads).

    On a GPU with TensorRT, ``max_batch_size`` (the batcher's largest batch; default the model's)
    bounds its optimisation profile and ``trt_cache_root`` holds the engine cache
    (default ~/.cache/deepserve/trt; deepserve.handlers.trt_plan).
    """
    path = version_dir / variant.file
    if not _file_exists(path, variant.format):
        raise ModelLoadError(f"{path} is missing; re-export the model or pick another variant")
    if not _installed(variant.format):
        raise ModelLoadError(missing_backend(ModelSpec.read(version_dir), variant))
    if variant.format == "onnx":
        from deepserve.handlers.ort_runtime import OrtRuntime

        if is_cuda(device) and not ort_gpu_available():
            raise ModelLoadError(
                f"device {device!r} requested for {variant.file} but this onnxruntime has no CUDA/TensorRT "
                "provider; install the `gpu` extra (onnxruntime-gpu, not both builds) or use runtime='pt2'"
            )
        n_threads = threads or default_threads()
        return OrtRuntime(path, variant, device=device, threads=n_threads, spinning=spinning,
                          spec=ModelSpec.read(version_dir), max_batch_size=max_batch_size,
                          trt_cache_root=trt_cache_root, fit_threads=threads is None)  # fmt: skip
    if is_cuda(device):
        _require_cuda(device)
    spec = ModelSpec.read(version_dir)
    if variant.format == "transformers":
        from deepserve.handlers.hf_runtime import load_hf_runtime

        return load_hf_runtime(path, variant, spec, device=device, threads=threads)
    from deepserve.handlers.torch_runtime import load_torch_runtime

    return load_torch_runtime(path, variant, spec, device=device, threads=threads)


def open_eager(
    version_dir: Path, *, device: str = "cpu", precision: str | None = None, threads: int | None = None
) -> Runtime:
    """Rebuild the model from the checkpoint named in model.json ``source`` (no exported file needed)."""
    if not torch_available():
        spec = ModelSpec.read(version_dir)
        raise ModelLoadError(f"model {spec.name} v{spec.version}: the eager runtime rebuilds it with torch; "
                             f"{TORCH_HINT}")  # fmt: skip
    if is_cuda(device):
        _require_cuda(device)
    from deepserve.handlers.torch_runtime import load_eager_runtime

    return load_eager_runtime(version_dir, ModelSpec.read(version_dir), device=device, precision=precision,
                              threads=threads)  # fmt: skip


def _require_cuda(device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available here; use device='cpu'")
