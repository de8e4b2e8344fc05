"""TorchScript files (``model.pt``, ``model.fp16.pt``) by ``jit.trace``.

TorchScript is deprecated in torch 2.13 but is what TorchServe and libtorch load, so it stays as
a legacy format; ``model.pt2`` (torch.export) is its successor. Every ``torch.jit`` call warns;
those warnings are ours to silence, here and nowhere else.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit's own deprecation / tracer warnings, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` whose floating weights are ``dtype`` (the float32 original is untouched)."""
    return copy.deepcopy(module).to(dtype).eval()


def write_torchscript(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Trace under no_grad (the transformer's trace check only passes without autograd) and save."""
    with quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with quiet_jit():
        return torch.jit.load(str(path), map_location="cpu").eval()
