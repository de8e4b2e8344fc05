"""``torch.export`` programs (``model.pt2``, ``model.bf16.pt2``): the successor of TorchScript.

A saved ExportedProgram reloads with torch alone (no model code). ``nn.LSTM`` / ``nn.GRU`` with a
dynamic sequence length only export inside torch's while-loop RNN decomposition (its default
decomposition specialises the sequence length); that patch lives in a private module, so it is
looked up defensively and covered by the zoo tests.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _rnn_patches(module: nn.Module) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    kinds = {type(m) for m in module.modules()}
    from torch.export import _patches as patches  # private: pinned by tests/export

    if nn.LSTM in kinds:
        stack.enter_context(patches.register_lstm_while_loop_decomposition())
    if nn.GRU in kinds:
        stack.enter_context(patches.register_gru_while_loop_decomposition())
    return stack


def export_program(
    module: nn.Module, example: tuple[torch.Tensor, ...], dynamic_shapes: Any
) -> torch.export.ExportedProgram:
    with _rnn_patches(module), torch.no_grad():
        return torch.export.export(module.eval(), example, dynamic_shapes=dynamic_shapes)


def write_pt2(
    module: nn.Module, example: tuple[torch.Tensor, ...], dynamic_shapes: Any, path: Path
) -> Path:
    torch.export.save(export_program(module, example, dynamic_shapes), str(path))
    return path


def load_pt2(path: Path) -> nn.Module:
    return torch.export.load(str(path)).module()


def cpu_has_bf16() -> bool:
    """True where bf16 matmul/conv have native CPU kernels (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))
