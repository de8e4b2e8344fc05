"""``torch.export`` programs (``model.pt2``, ``model.bf16.pt2``): the successor of TorchScript.

A saved ExportedProgram reloads with torch alone (no model code). ``nn.LSTM`` / ``nn.GRU`` with a
dynamic sequence length only export inside torch's while-loop RNN decomposition (its default
decomposition specialises the sequence length); that patch lives in a private module, so it is
looked up defensively and covered by the zoo tests.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _rnn_patches(module: nn.Module) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    kinds = {type(m) for m in module.modules()}
    from torch.export import _patches as patches  # private: pinned by tests/export

    # The patches swap py_kernels by plain dict assignment, which leaves OpOverload dispatch caches
    # stale: after an ONNX export (which applies the same patch), a later export would otherwise
    # run the sequence-specialising default decomposition.
    for op in (
        torch.ops.aten.lstm.input,
        torch.ops.aten.lstm.data,
        torch.ops.aten.gru.input,
        torch.ops.aten.gru.data,
    ):
        op._dispatch_cache.clear()
        stack.callback(op._dispatch_cache.clear)
    if nn.LSTM in kinds:
        stack.enter_context(patches.register_lstm_while_loop_decomposition())
    if nn.GRU in kinds:
        stack.enter_context(patches.register_gru_while_loop_decomposition())
    return stack


@contextlib.contextmanager
def torch_export_warnings() -> Iterator[None]:
    """torch 2.13's exporter warns about its own internals (deprecated pytree LeafSpec, _check_is_size in
    its RNN while-loop patch, RNN flat weights); not ours to fix, and fatal under warnings-as-errors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"_check_is_size will be removed", category=FutureWarning)
        warnings.filterwarnings(
            "ignore", message=r".*_flat_weights.*were assigned during export", category=UserWarning
        )
        yield


def export_program(
    module: nn.Module, example: tuple[torch.Tensor, ...], dynamic_shapes: Any
) -> torch.export.ExportedProgram:
    with _rnn_patches(module), torch_export_warnings(), torch.no_grad():
        return torch.export.export(module.eval(), example, dynamic_shapes=dynamic_shapes)


def write_pt2(module: nn.Module, example: tuple[torch.Tensor, ...], dynamic_shapes: Any, path: Path) -> Path:
    program = export_program(module, example, dynamic_shapes)
    with torch_export_warnings():
        torch.export.save(program, str(path))
    return path


def load_pt2(path: Path) -> nn.Module:
    with torch_export_warnings():
        return torch.export.load(str(path)).module()


def cpu_has_bf16() -> bool:
    """True where bf16 matmul/conv have native CPU kernels (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))
