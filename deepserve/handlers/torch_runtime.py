"""PyTorch backends: TorchScript (``.pt``), torch.export (``.pt2``) and eager from a checkpoint.

All three become one ``TorchRuntime``: feeds go in model.json input order, run under
``torch.inference_mode``, and floating outputs come back as float32 numpy arrays. Exported
low-precision files normally take float32 (export wraps them in a casting module); a file with
native fp16/bf16 inputs is detected (``.pt2``: from the program's signature; TorchScript: by one
retry with the inputs cast) and fed in its own dtype.

``torch.set_num_threads`` is process-wide: it is set only when the caller gives ``threads``, so
the service decides how the cores are shared between models.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepserve.handlers.base import ModelLoadError
from deepserve.handlers.runtime import Runtime
from deepserve.store import ModelSpec, Variant

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}


@contextmanager
def quiet_jit() -> Iterator[None]:
    """torch.jit.load warns that TorchScript is deprecated; that one warning is expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


class TorchRuntime(Runtime):
    def __init__(
        self,
        module: Callable[..., Any],
        spec: ModelSpec,
        *,
        kind: str,
        file: str,
        precision: str,
        device: str,
        float_dtype: torch.dtype | None = None,
    ) -> None:
        self.module, self.kind, self.file, self.precision = module, kind, file, precision
        self.device = torch.device(device)
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        # None = not known yet (TorchScript): try float32 first, then the variant's dtype.
        self._float_dtype = float_dtype
        log.info("%s", self.describe())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.file}: missing inputs {missing}; the graph takes {self.input_names}")
        dtype = self._float_dtype or torch.float32
        try:
            return self._run(feeds, dtype)
        except RuntimeError:
            fallback = _DTYPES.get(self.precision, torch.float32)
            if self._float_dtype is not None or fallback == torch.float32:
                raise
        out = self._run(feeds, fallback)  # native low-precision inputs: remember for next time
        self._float_dtype = fallback
        return out

    def _run(self, feeds: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, np.ndarray]:
        args = [self._tensor(feeds[n], dtype) for n in self.input_names]
        with torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, dict):  # an imported program returning named tensors (its outputs' names)
            result = tuple(result[name] for name in self.output_names)
        outs = result if isinstance(result, tuple | list) else (result,)
        if len(outs) != len(self.output_names):
            raise ValueError(f"{self.file} gave {len(outs)} outputs, model.json: {self.output_names}")
        return {name: _to_numpy(t) for name, t in zip(self.output_names, outs, strict=True)}

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        t = torch.from_numpy(np.require(array, requirements="C"))  # keeps a 0-d array 0-d
        if t.is_floating_point():
            t = t.to(dtype)
        return t.to(self.device)

    @property
    def provider(self) -> str:
        return f"torch-{self.device.type}"  # torch-cpu, torch-cuda

    def describe(self) -> str:
        threads = torch.get_num_threads()
        return f"{self.kind} {self.file} ({self.precision}) on {self.device}, torch_threads={threads}"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t.cpu().numpy()


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_torch_runtime(
    path: Path, variant: Variant, spec: ModelSpec, *, device: str, threads: int | None
) -> TorchRuntime:
    _set_threads(threads)
    try:
        if variant.format == "torchscript":
            with quiet_jit():
                module: Any = torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]
            float_dtype = None
        else:
            program = torch.export.load(str(path))
            float_dtype = _program_float_dtype(program)
            module = program.module().to(device)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ModelLoadError(f"cannot load {path} as {variant.format}: {exc}; re-export the model") from exc
    kind = "torchscript" if variant.format == "torchscript" else "torch.export"
    return TorchRuntime(module, spec, kind=kind, file=path.name, precision=variant.precision, device=device,
                        float_dtype=float_dtype)  # fmt: skip


def _program_float_dtype(program: torch.export.ExportedProgram) -> torch.dtype:
    """The dtype of the program's first floating user input (float32 when it has none)."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" and node.name in user_inputs else None
        if isinstance(val, torch.Tensor) and val.is_floating_point():
            return val.dtype
    return torch.float32


def checkpoint_path(version_dir: Path, spec: ModelSpec) -> Path:
    """model.json ``source``: absolute, or relative to the version directory or the working directory."""
    if not spec.source:
        raise ModelLoadError(f"{spec.name} v{spec.version}: model.json records no source checkpoint; eager "
                             "fallback impossible, serve an exported variant instead")  # fmt: skip
    source = Path(spec.source)
    for candidate in (source, version_dir / source):
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{spec.name} v{spec.version}: source checkpoint {spec.source} not found (looked in {version_dir} "
        "and the working directory); the eager fallback needs it"
    )


def load_eager_runtime(
    version_dir: Path, spec: ModelSpec, *, device: str, precision: str | None, threads: int | None
) -> TorchRuntime:
    from deepserve.training.checkpoint import CheckpointError

    _set_threads(threads)
    path = checkpoint_path(version_dir, spec)
    prec = precision or "fp32"
    dtype = _DTYPES.get(prec, torch.float32)
    try:
        module = serving_module(path, spec).to(device=device, dtype=dtype).eval()
    except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"eager fallback cannot rebuild {spec.name} from {path}: {exc}") from exc
    return TorchRuntime(module, spec, kind="eager", file=path.name, precision=prec, device=device,
                        float_dtype=dtype)  # fmt: skip


def serving_module(path: Path, spec: ModelSpec) -> torch.nn.Module:
    """The module export traces for ``spec`` (model_store/README.md's graph I/O, input arithmetic inside).

    Export plans one graph per store model (a VAE checkpoint plans two); the one whose input and
    output names match model.json is the module this version's files were made from.
    """
    # Imported by name: the exporter (and torch's tracing stack) is needed only by this fallback,
    # and is not part of the handlers' strict type check.
    exporter = importlib.import_module("deepserve.export.exporter")
    ckpt = exporter.read_checkpoint(path)  # load_checkpoint, tolerant of older checkpoints' meta
    names = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    for plan in exporter.plan_checkpoint(ckpt):
        if (plan.input_names, plan.output_names) == names:
            module: torch.nn.Module = plan.module
            return module
    raise ValueError(f"the checkpoint plans no graph with inputs {names[0]} and outputs {names[1]}")
