"""What the TensorRT provider is told for one model file: fp16, engine cache folder, profile.

    plan = plan_tensorrt(path, variant, spec, device_id=0, max_batch_size=32)
    plan.cache_dir   # ~/.cache/deepserve/trt/minilm-v1-fp16-3f2a9c1e0b4d-NVIDIA-H100-sm90-ort1.32.0
    plan.profile     # input_ids:1x1,... / input_ids:32x128,... / input_ids:32x128,...

The cache folder is a key: a new model file (its sha256), another GPU (name and compute
capability, from NVML) or another onnxruntime gives a new, empty folder, so TensorRT builds a
fresh engine instead of loading a stale one. ORT's own engine file names cover only part of this:
they hash the graph's structure and name the compute capability (``..._sm90.engine``), not the
weights, so a retrained model with the same graph would otherwise load the old engine.

The profile spans every dynamic axis of the graph inputs: the batch axis from 1 to the batcher's
maximum (opt: the largest preferred batch size), a text model's sequence axis from 1 to
``max_length`` (a generation model's: ``context_length``). An axis with no known bound (e.g. a
KV-cache length, which starts at 0) means no profile: TensorRT then builds for the shapes it meets.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from deepserve.remote_store import default_cache_root
from deepserve.store import ModelSpec, TensorSpec, TextPreprocessing, Variant

log = logging.getLogger(__name__)

_NON_TENSOR_TYPES = ("BYTES",)  # served-only inputs (an image, a text): not graph inputs


@dataclass(frozen=True)
class ProfileShapes:
    """``trt_profile_{min,opt,max}_shapes`` strings: ``name:1x128,other:1x128``."""

    min_shapes: str
    opt_shapes: str
    max_shapes: str


@dataclass(frozen=True)
class TensorrtPlan:
    fp16: bool
    cache_dir: Path | None  # None: the cache folder cannot be written (a read-only root), no cache
    profile: ProfileShapes | None


def default_trt_cache_root() -> Path:
    """Beside the store cache: ``$XDG_CACHE_HOME/deepserve/trt`` or ``~/.cache/deepserve/trt``."""
    return default_cache_root().parent / "trt"


def file_digest(path: Path) -> str:
    """sha256 of the model file and its external-data files (``model.onnx.data``), 12 hex digits."""
    digest = hashlib.sha256()
    for part in [path, *sorted(path.parent.glob(f"{path.name}.*"))]:
        with part.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def gpu_identity(device_id: int) -> str:
    """``NVIDIA-H100-80GB-HBM3-sm90`` from NVML; ``gpu0-unknown`` where NVML cannot tell.

    NVML counts GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES, so on a node of mixed GPUs
    the index may name another card; ORT's ``_sm`` suffix still keeps engines per architecture.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except Exception:  # no nvidia-ml-py, no driver: the key says so, it does not fail the load
        return f"gpu{device_id}-unknown"
    text = name.decode() if isinstance(name, bytes) else str(name)
    return f"{text}-sm{major}{minor}"


def cache_key(spec: ModelSpec, variant: Variant, digest: str, gpu: str) -> str:
    ort = _dist_version("onnxruntime-gpu") or _dist_version("onnxruntime")
    raw = f"{spec.name}-v{spec.version}-{variant.precision}-{digest}-{gpu}-ort{ort}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)


def profile_shapes(spec: ModelSpec, max_batch_size: int) -> ProfileShapes | None:
    """The optimisation profile over the graph inputs' dynamic axes (None: an axis has no bound)."""
    opt_batch = max((b for b in _preferred(spec) if b <= max_batch_size), default=max_batch_size)
    seq = _sequence_bound(spec)
    lows, opts, highs = [], [], []
    for tensor in _graph_inputs(spec):
        dims: list[tuple[int, int, int]] = []
        for axis, size in enumerate(tensor.shape):
            if size >= 0:
                dims.append((size, size, size))
            elif axis == 0 and spec.max_batch_size > 0:
                dims.append((1, opt_batch, max_batch_size))
            elif seq is not None:
                dims.append((1, seq, seq))
            else:
                return None
        lows.append(_shape(tensor.name, [d[0] for d in dims]))
        opts.append(_shape(tensor.name, [d[1] for d in dims]))
        highs.append(_shape(tensor.name, [d[2] for d in dims]))
    if not lows:
        return None
    return ProfileShapes(",".join(lows), ",".join(opts), ",".join(highs))


def plan_tensorrt(
    path: Path,
    variant: Variant,
    spec: ModelSpec,
    *,
    device_id: int,
    max_batch_size: int | None = None,
    cache_root: Path | None = None,
) -> TensorrtPlan:
    """The plan for ``path``; ``max_batch_size`` defaults to the model's own (model.json)."""
    rows = max(1, max_batch_size or spec.max_batch_size or 1)
    key = cache_key(spec, variant, file_digest(path), gpu_identity(device_id))
    fp16 = variant.precision == "fp16"  # an fp32 variant stays fp32: only fp16 passed its parity check
    folder = (cache_root or default_trt_cache_root()) / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. readOnlyRootFilesystem and no writable $XDG_CACHE_HOME
        log.warning("TensorRT engine cache off for %s (engines rebuilt at every start): %s", path.name, exc)
        return TensorrtPlan(fp16=fp16, cache_dir=None, profile=profile_shapes(spec, rows))
    return TensorrtPlan(fp16=fp16, cache_dir=folder, profile=profile_shapes(spec, rows))


def _graph_inputs(spec: ModelSpec) -> list[TensorSpec]:
    return [t for t in spec.inputs if t.datatype not in _NON_TENSOR_TYPES]


def _preferred(spec: ModelSpec) -> list[int]:
    return list(spec.batching.preferred_batch_sizes) if spec.batching is not None else []


def _sequence_bound(spec: ModelSpec) -> int | None:
    if isinstance(spec.preprocessing, TextPreprocessing):
        return spec.preprocessing.max_length
    # a generation graph with KV-cache inputs has a past-length axis that starts at 0: no bound fits
    plain = all(len(t.shape) <= 2 for t in _graph_inputs(spec))
    if spec.generation is not None and spec.generation.context_length and plain:
        return spec.generation.context_length
    return None


def _shape(name: str, dims: list[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in dims)}"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""
