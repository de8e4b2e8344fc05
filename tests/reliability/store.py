"""The model store the reliability tests serve, and valid inputs for its models.

Preferred: the real default models (``quick_store`` fixture when the suite defines one, or a store
named by ``DEEPSERVE_RELIABILITY_STORE``). Fallback, made here in seconds: tiny models with the
default store NAMES and graph I/O (model_store/README.md), so every test addresses ``tabular-mlp``,
``digits-cnn`` and ``docs-gpt`` the same way whichever store it gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TABULAR, IMAGE, GPT, EMBED = "tabular-mlp", "digits-cnn", "docs-gpt", "minilm"
GPT_CONTEXT = 128


def spec_of(store: Path, name: str) -> dict[str, Any]:
    """model.json of the highest version of ``name``."""
    versions = sorted(int(p.name) for p in (store / name).iterdir() if p.name.isdigit())
    spec: dict[str, Any] = json.loads((store / name / str(versions[-1]) / "model.json").read_text())
    return spec


def has(store: Path, name: str) -> bool:
    return any((store / name).glob("*/model.json"))


def row_shape(store: Path, name: str) -> list[int]:
    """The per-row shape of the model's first input (batch dim dropped)."""
    return [int(d) for d in spec_of(store, name)["inputs"][0]["shape"][1:]]


def sample_rows(store: Path, name: str, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` valid rows for a tabular / image model: (rows, *row_shape) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    return rng.random((rows, *row_shape(store, name)), dtype=np.float32)


def build_tiny_store(root: Path) -> Path:
    """tabular-mlp (30 features), digits-cnn (1x8x8, a few conv layers) and docs-gpt (bytes GPT)."""
    import torch
    from torch import nn

    from deepserve.store import ImagePreprocessing, TabularPreprocessing, TensorSpec
    from tests.handlers.tiny import RowNet, write_version

    def tensor(name: str, datatype: str, shape: list[int]) -> TensorSpec:
        return TensorSpec(name=name, datatype=datatype, shape=shape)  # type: ignore[arg-type]

    class ConvNet(nn.Module):
        """(B, 1, 8, 8) -> (B, 10); wide enough that a full batch costs real compute."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, padding=1),
                nn.ReLU(),
            )
            self.head = nn.Linear(32, 10)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(pixels).mean(dim=(2, 3)))  # (B, 10)

    torch.manual_seed(0)
    onnx = [("onnx", "fp32", True)]
    write_version(
        root,
        TABULAR,
        RowNet(30, 2),
        (torch.randn(2, 30),),
        task="classification",
        inputs=[tensor("features", "FP32", [-1, 30])],
        outputs=[tensor("logits", "FP32", [-1, 2])],
        files=onnx,
        labels=["malignant", "benign"],
        preprocessing=TabularPreprocessing(
            features=[f"f{i}" for i in range(30)], mean=[0.0] * 30, std=[1.0] * 30
        ),
    )
    write_version(
        root,
        IMAGE,
        ConvNet(),
        (torch.rand(2, 1, 8, 8),),
        task="classification",
        inputs=[tensor("pixels", "FP32", [-1, 1, 8, 8])],
        outputs=[tensor("logits", "FP32", [-1, 10])],
        files=onnx,
        labels=[str(i) for i in range(10)],
        preprocessing=ImagePreprocessing(channels=1, height=8, width=8, mean=[0.5], std=[0.25]),
    )
    _write_gpt(root / GPT / "1")
    return root


def _write_gpt(version: Path) -> None:
    """A byte-level GPT exported as export/ does it: one graph with an explicit KV cache."""
    import torch

    from deepserve.export.generative_plans import write_gpt_version
    from deepserve.models import build_model

    torch.manual_seed(0)
    gpt: Any = build_model("gpt", vocab_size=256, context_length=GPT_CONTEXT, n_layer=2, n_head=2, d_model=16)
    write_gpt_version(gpt.eval(), version, name=GPT)
