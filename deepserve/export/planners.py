"""Checkpoint -> graph plans, one function per serving shape (model_store/README.md's graph I/O)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from deepserve.export.heldout import held_out
from deepserve.export.plan import GraphPlan, batch_dim, pad_rows, spec, split_batches
from deepserve.export.serving import (
    ImageModel,
    TabularModel,
    TextClassifier,
    TextEmbedder,
)
from deepserve.training.checkpoint import Checkpoint
from deepserve.training.features import categorical_columns

INT8_MODELS = {"transformer", "gpt", "bert"}


def _out_dims(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[int]:
    with torch.no_grad():
        return list(module(*example).shape[1:])


def _image_in(prep: dict[str, Any]) -> tuple[list[Any], tuple[torch.Tensor, ...]]:
    c, h, w = prep["channels"], prep["height"], prep["width"]
    return [spec("pixels", "FP32", [-1, c, h, w])], (torch.rand(2, c, h, w),)


def plan_image(ckpt: Checkpoint, model: nn.Module, prep: dict[str, Any]) -> GraphPlan:
    inputs, example = _image_in(prep)
    module = ImageModel(model, prep["mean"], prep["std"]).eval()
    rows, where = held_out(ckpt.meta)
    return GraphPlan(
        "",
        "classification",
        module,
        inputs,
        [spec("logits", "FP32", [-1, *_out_dims(module, example)])],
        example,
        {"pixels": {0: batch_dim()}},
        split_batches(rows),
        where,
        max_batch_size=64,
        classifier=True,
        labels=list(ckpt.meta.get("labels", [])),
    )


def _categories_asset(categories: dict[str, list[str]]) -> dict[str, str]:
    """categories.json: what each one-hot column's index means (a client sends the index)."""
    if not categories:
        return {}
    return {"categories.json": json.dumps(categories, indent=2, ensure_ascii=False) + "\n"}


def plan_tabular(ckpt: Checkpoint, model: nn.Module, prep: dict[str, Any]) -> GraphPlan:
    regression = ckpt.task == "regression"
    categories: dict[str, list[str]] = dict(prep.get("categories") or {})
    module = TabularModel(
        model,
        prep["mean"],
        prep["std"],
        prep.get("target_mean") if regression else None,
        prep.get("target_std") if regression else None,
        categorical=categorical_columns(list(prep["features"]), categories),
    ).eval()
    example = (
        torch.tensor(prep["mean"], dtype=torch.float32).repeat(2, 1) + torch.randn(2, len(prep["mean"])),
    )
    out = "predictions" if regression else "logits"
    rows, where = held_out(ckpt.meta)
    return GraphPlan(
        "",
        "regression" if regression else "classification",
        module,
        [spec("features", "FP32", [-1, len(prep["features"])])],
        [spec(out, "FP32", [-1, *_out_dims(module, example)])],
        example,
        {"features": {0: batch_dim()}},
        split_batches(rows),
        where,
        max_batch_size=256,
        classifier=not regression,
        labels=list(ckpt.meta.get("labels", [])),
        assets=_categories_asset(categories),
    )


def _text_batches(ckpt: Checkpoint) -> tuple[list[dict[str, np.ndarray]], str]:
    rows, where = held_out(ckpt.meta)
    batches = split_batches(rows, (1, 5))
    for b in batches:
        b["input_ids"], b["attention_mask"] = pad_rows(b["input_ids"], b["attention_mask"])
    return batches, where + "; rows right-padded to different lengths"


def plan_text(ckpt: Checkpoint, model: nn.Module, prep: dict[str, Any]) -> GraphPlan:
    embedding = ckpt.task == "embedding"
    module = (TextEmbedder(model) if embedding else TextClassifier(model)).eval()
    # an odd example length: a sequence length equal to a layer width (e.g. 16) gets specialised
    vocab, T = int(prep.get("vocab_size", 256)), min(11, int(prep["max_length"]))
    example = (torch.randint(1, vocab, (2, T)), torch.ones(2, T, dtype=torch.int64))
    seq = torch.export.Dim("sequence", min=1, max=int(prep["max_length"]))
    dims = {"input_ids": {0: batch_dim(), 1: seq}, "attention_mask": {0: batch_dim(), 1: seq}}
    out = "sentence_embedding" if embedding else "logits"
    batches, where = _text_batches(ckpt)
    return GraphPlan(
        "",
        "embedding" if embedding else "classification",
        module,
        [spec(n, "INT64", [-1, -1]) for n in dims],
        [spec(out, "FP32", [-1, *_out_dims(module, example)])],
        example,
        dims,
        batches,
        where,
        max_batch_size=32,
        classifier=not embedding,
        int8=ckpt.model_name in INT8_MODELS,
        labels=list(ckpt.meta.get("labels", [])),
        assets=dict(ckpt.meta.get("assets") or {}),  # a subword model's tokenizer.json
    )


class _Encoder(nn.Module):
    """VAE / autoencoder encoder -> the mean of q(z|x) (the embedding)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.encode(x)  # type: ignore[operator]
        return z[0] if isinstance(z, tuple) else z  # (B, Z)


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)  # type: ignore[operator, no-any-return]
