"""Tiny models with the graph I/O of model_store/README.md, written as model-store versions by the tests.

Each builder writes the requested files (ONNX via the dynamo exporter, TorchScript, torch.export)
and a model.json made with deepserve.store, so the handlers meet the same layout the exporter
makes, in seconds.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepserve.export.onnx_graph import write_onnx
from deepserve.export.precision import CastIO, write_fp16_onnx
from deepserve.export.pt2 import write_pt2
from deepserve.export.torchscript import write_torchscript
from deepserve.store import ModelSpec, TensorSpec, Variant


class PixelNet(nn.Module):
    """pixels (B, C, H, W) in [0, 1] -> (B, K): normalisation inside, as export bakes it."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.head = nn.Linear(4, out)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv((pixels - 0.5) / 0.25))  # (B, 4, H, W)
        return self.head(x.mean(dim=(2, 3)))  # (B, K)


class RowNet(nn.Module):
    def __init__(self, features: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)  # (B, out)


class BagOfTokens(nn.Module):
    """(input_ids, attention_mask) (B, T) -> (B, out): masked mean of embeddings; padding-invariant."""

    def __init__(self, vocab: int, out: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, out)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
        pooled = (self.emb(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, 8)
        return self.head(pooled)  # (B, out)


class Generator(nn.Module):
    def __init__(self, latent: int, channels: int, size: int) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.net = nn.Linear(latent, channels * size * size)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(latent)).view(-1, *self.shape)  # (B, C, H, W) in [0, 1]


def _dynamic(inputs: list[TensorSpec]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=1, max=64)
    return tuple({0: batch, 1: seq} if t.shape[1:] == [-1] else {0: batch} for t in inputs)


def _write(
    module: nn.Module,
    fmt: str,
    precision: str,
    example: tuple[torch.Tensor, ...],
    spec_io: tuple[list[TensorSpec], list[TensorSpec]],
    vdir: Path,
) -> str:
    inputs, outputs = spec_io
    if fmt == "onnx" and precision == "fp32":
        write_onnx(
            module,
            example,
            vdir / "model.onnx",
            input_names=[t.name for t in inputs],
            output_names=[t.name for t in outputs],
            dynamic_shapes=_dynamic(inputs),
        )
        return "model.onnx"
    if fmt == "onnx" and precision == "fp16":
        write_fp16_onnx(vdir / "model.onnx", vdir / "model.fp16.onnx")
        return "model.fp16.onnx"
    wrapped = module if precision == "fp32" else CastIO(module, torch.float16)
    if fmt == "torchscript":
        name = "model.pt" if precision == "fp32" else f"model.{precision}.pt"
        write_torchscript(wrapped, example, vdir / name)
        return name
    name = "model.pt2" if precision == "fp32" else f"model.{precision}.pt2"
    write_pt2(wrapped, example, _dynamic(inputs), vdir / name)
    return name


def write_version(
    store: Path,
    name: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    *,
    task: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    files: list[tuple[str, str, bool]],
    **fields: Any,
) -> Path:
    """Write ``store/name/1``; ``files`` = (format, precision, usable), fp32 ONNX first when present."""
    vdir = store / name / "1"
    vdir.mkdir(parents=True)
    module = copy.deepcopy(module).eval()
    variants = []
    for fmt, precision, usable in files:
        file = _write(module, fmt, precision, example, (inputs, outputs), vdir)
        reason = None if usable else "parity failed: rel 3e-2 > 2e-3"
        variants.append(Variant(file=file, format=fmt, precision=precision, usable=usable, reason=reason))
    ModelSpec(
        name=name,
        version=1,
        task=task,
        architecture="tiny",
        inputs=inputs,
        outputs=outputs,
        max_batch_size=16,
        variants=variants,
        created=datetime.now(UTC).isoformat(),
        torch_version=torch.__version__,
        **fields,
    ).write(vdir)
    return vdir
