"""The issue-4 benchmark models, made with seeded random weights and exported the normal way.

- ``bench-resnet18``: the zoo's ``resnet18`` (ImageNet stem) for 3x224x224 images, 10 classes;
- ``bench-mlp``: a tiny MLP 64 -> 512 -> 256 -> 10 (no dropout or batch norm), fed sklearn
  digits rows (64 raw pixel values), with the digits' feature statistics baked into the graph.

Each is a normal checkpoint (training.checkpoint.save_checkpoint) exported with
export.exporter.export_checkpoint into a store, so the server serves them like any other model.
A version already in the store is reused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _labels() -> list[str]:
    return [str(i) for i in range(10)]


def _meta(recipe: str, prep: dict[str, Any]) -> dict[str, Any]:
    # torch_version as a plain str: save_checkpoint's default is a TorchVersion object, which
    # load_checkpoint (weights_only=True) refuses to unpickle
    return {
        "task": "classification",
        "labels": _labels(),
        "preprocessing": prep,
        "recipe": recipe,
        "data_source": "random weights (benchmark model)",
        "metrics": {},
        "torch_version": str(torch.__version__),
    }


def resnet_checkpoint(seed: int = 0) -> Any:
    from deepserve.models import build_model
    from deepserve.training.checkpoint import Checkpoint

    torch.manual_seed(seed)
    config = {"num_classes": 10}
    model = build_model("resnet18", **config).eval()
    prep = {
        "kind": "image",
        "channels": 3,
        "height": 224,
        "width": 224,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    return Checkpoint("resnet18", config, model.state_dict(), _meta("bench-resnet18", prep))


def mlp_checkpoint(seed: int = 0) -> Any:
    from sklearn.datasets import load_digits

    from deepserve.models import build_model
    from deepserve.training.checkpoint import Checkpoint

    torch.manual_seed(seed)
    config = {
        "in_features": 64,
        "out_features": 10,
        "hidden": [512, 256],
        "dropout": 0.0,
        "batch_norm": False,
    }
    model = build_model("mlp", **config).eval()
    data = load_digits().data.astype(np.float32)
    prep = {
        "kind": "tabular",
        "features": [f"pixel_{i}" for i in range(64)],
        "mean": data.mean(0).tolist(),
        "std": (data.std(0) + 1e-3).tolist(),
    }
    return Checkpoint("mlp", config, model.state_dict(), _meta("bench-mlp", prep))


BENCH_MODELS = {"bench-resnet18": resnet_checkpoint, "bench-mlp": mlp_checkpoint}


def make_bench_models(
    store: Path, *, names: list[str] | None = None, force: bool = False, mar: bool = False
) -> dict[str, Path]:
    """Create and export the bench models into ``store``; returns name -> version directory."""
    from deepserve.export.exporter import export_checkpoint
    from deepserve.training.checkpoint import save_checkpoint

    store = Path(store)
    written: dict[str, Path] = {}
    for name in names or list(BENCH_MODELS):
        existing = sorted((store / name).glob("*/model.json"))
        if existing and not force:
            written[name] = existing[-1].parent
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(BENCH_MODELS[name](), Path(tmp) / "checkpoint.pt")
            written[name] = export_checkpoint(ckpt, store, name=name, force=force, mar=mar)[0]
    return written
