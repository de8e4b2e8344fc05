"""Tiny checkpoints of every registered zoo model, with the meta the trainer writes (export's input).

Random-init weights and no ``data_source``: held-out inputs are drawn from the meta statistics.
A registered model without a case here fails ``test_every_zoo_model_has_an_export_case``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepserve.models import build_model
from deepserve.training.checkpoint import Checkpoint, save_checkpoint


def image_prep(c: int, s: int) -> dict[str, Any]:
    return {"kind": "image", "channels": c, "height": s, "width": s, "mean": [0.3] * c, "std": [0.25] * c}


TEXT_PREP = {"kind": "text", "tokenizer": "bytes", "max_length": 16, "pad_id": 0, "vocab_size": 32}
TABULAR_PREP = {
    "kind": "tabular",
    "features": [f"f{i}" for i in range(5)],
    "mean": [1.0, -2.0, 0.0, 10.0, 0.5],
    "std": [2.0, 0.5, 1.0, 4.0, 0.1],
}
LABELS = ["a", "b", "c"]


@dataclass(frozen=True)
class ExportCase:
    id: str
    model: str
    config: dict[str, Any]
    meta: dict[str, Any]


def _cls(prep: dict[str, Any], labels: list[str] = LABELS) -> dict[str, Any]:
    return {"task": "classification", "labels": labels, "preprocessing": prep}


TINY_TEXT = {"vocab_size": 32, "num_classes": 3, "dropout": 0.0}
TINY_BERT = {"hidden_size": 16, "n_layer": 1, "n_head": 2, "intermediate_size": 32, "max_position": 16}
CASES = [
    ExportCase(
        "mlp",
        "mlp",
        {"in_features": 5, "out_features": 3, "hidden": (16, 8), "dropout": 0.0},
        _cls(TABULAR_PREP),
    ),
    ExportCase(
        "mlp-regression",
        "mlp",
        {"in_features": 5, "out_features": 2, "hidden": (8,), "dropout": 0.0},
        {
            "task": "regression",
            "preprocessing": {
                **TABULAR_PREP,
                "targets": ["y1", "y2"],
                "target_mean": [100.0, -3.0],
                "target_std": [50.0, 2.0],
            },
        },
    ),
    ExportCase(
        "lenet", "lenet", {"in_channels": 1, "image_size": 8, "num_classes": 3}, _cls(image_prep(1, 8))
    ),
    ExportCase(
        "resnet",
        "resnet",
        {
            "in_channels": 1,
            "image_size": 8,
            "num_classes": 3,
            "stem_channels": 8,
            "widths": (8, 16),
            "blocks": (1, 1),
            "se": True,
            "stem": "small",
        },
        _cls(image_prep(1, 8)),
    ),
    ExportCase(
        "resnet18",
        "resnet18",
        {"num_classes": 3, "image_size": 16, "stem_channels": 8, "widths": (8, 8, 8, 8)},
        _cls(image_prep(3, 16)),
    ),
    ExportCase(
        "mobilenet",
        "mobilenet",
        {"in_channels": 1, "image_size": 8, "num_classes": 3, "widths": (8, 16), "strides": (1, 2)},
        _cls(image_prep(1, 8)),
    ),
    ExportCase(
        "vit",
        "vit",
        {
            "image_size": 8,
            "patch_size": 4,
            "num_classes": 3,
            "d_model": 16,
            "n_head": 2,
            "n_layer": 1,
            "d_ff": 32,
            "dropout": 0.0,
        },
        _cls(image_prep(1, 8)),
    ),
    ExportCase("bilstm", "rnn", {**TINY_TEXT, "embed_dim": 8, "hidden": 8, "num_layers": 2}, _cls(TEXT_PREP)),
    ExportCase(
        "gru",
        "rnn",
        {**TINY_TEXT, "embed_dim": 8, "hidden": 8, "cell": "gru", "bidirectional": False},
        _cls(TEXT_PREP),
    ),
    ExportCase(
        "transformer",
        "transformer",
        {**TINY_TEXT, "d_model": 16, "n_head": 2, "n_layer": 1, "d_ff": 32, "max_len": 16},
        _cls(TEXT_PREP),
    ),
    ExportCase(
        "bert",
        "bert",
        {**TINY_TEXT, **TINY_BERT},
        _cls(TEXT_PREP),
    ),
    ExportCase(
        "transformer-embedding",
        "transformer",
        {**TINY_TEXT, "d_model": 16, "n_head": 2, "n_layer": 1, "d_ff": 32, "max_len": 16},
        {"task": "embedding", "preprocessing": TEXT_PREP},
    ),
    ExportCase(
        "gpt",
        "gpt",
        {"vocab_size": 256, "context_length": 64, "n_layer": 2, "n_head": 2, "d_model": 16},
        {
            "task": "text-generation",
            "preprocessing": {**TEXT_PREP, "max_length": 64, "vocab_size": 256},
            "generation": {"max_tokens": 16, "temperature": 0.8},
        },
    ),
    ExportCase(
        "autoencoder",
        "autoencoder",
        {"image_size": 8, "latent_dim": 4, "hidden": (4, 8)},
        {"task": "embedding", "preprocessing": image_prep(1, 8), "decoder_output_range": [0.0, 1.0]},
    ),
    ExportCase(
        "vae",
        "vae",
        {"image_size": 8, "latent_dim": 4, "hidden": (8, 16)},
        {"task": "embedding", "preprocessing": image_prep(1, 8), "decoder_output_range": [0.0, 1.0]},
    ),
    ExportCase(
        "dcgan_generator",
        "dcgan_generator",
        {"latent_dim": 8, "image_size": 8, "base": 8},
        {
            "task": "image-generation",
            "preprocessing": {"kind": "latent", "latent_dim": 8},
            "generator_output_range": [-1.0, 1.0],
        },
    ),
    ExportCase(
        "dcgan_discriminator",
        "dcgan_discriminator",
        {"image_size": 8, "base": 8},
        _cls(image_prep(1, 8), ["real"]),
    ),
]


def write_checkpoint(case: ExportCase, path: Path, *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(case.model, **case.config)
    # str(): save_checkpoint's default meta["torch_version"] is a TorchVersion, which weights_only refuses
    meta = {
        **case.meta,
        "recipe": "custom",
        "metrics": {"accuracy": 0.5},
        "torch_version": str(torch.__version__),
    }
    return save_checkpoint(Checkpoint(case.model, dict(case.config), model.state_dict(), meta), path)


def case(case_id: str) -> ExportCase:
    return next(c for c in CASES if c.id == case_id)
