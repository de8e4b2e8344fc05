"""ONNX files: dynamo export, structural check, and the ONNX Runtime session used to verify them.

Every graph written here is checked twice before it counts: ``onnx.checker`` (catches e.g. an
output name colliding with an internal value) and an actual ONNX Runtime load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from deepserve.export.errors import ExportError, GraphCheckError
from deepserve.export.pt2 import torch_export_warnings

# fp16 transformer graphs segfault in this optimiser at session creation (onnxruntime#28392).
FP16_DISABLED_OPTIMIZERS = ["NchwcTransformer"]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter prints progress and logs a torchvision notice; keep the CLI readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch_export_warnings(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"onnxscript.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def write_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: Any,
) -> Path:
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    check_onnx(path, fp16=False)
    return path


def require_onnxruntime() -> None:
    """Export runs every ONNX file it writes; without an ONNX Runtime say which extra brings one."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportError(
            "export checks the ONNX files it writes with ONNX Runtime, which is not installed: "
            "pip install 'deepserve[serve]' (CPU) or 'deepserve[gpu]' (CUDA), not both"
        )


def ort_session(path: Path, *, fp16: bool = False, threads: int | None = None) -> Any:
    require_onnxruntime()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    disabled = FP16_DISABLED_OPTIMIZERS if fp16 else None
    return ort.InferenceSession(
        str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def check_onnx(path: Path, *, fp16: bool) -> None:
    """onnx.checker on the file, then an ONNX Runtime load; raise GraphCheckError naming the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # the checker raises several unrelated types
        raise GraphCheckError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    require_onnxruntime()
    try:
        ort_session(path, fp16=fp16, threads=1)
    except Exception as exc:  # ORT raises its own untyped errors
        raise GraphCheckError(f"{path.name} does not load in ONNX Runtime: {exc}") from exc
