"""Jobs for the user's own data: CSV -> MLP, image folder -> small ResNet, text file -> byte GPT."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from deepserve.training.config import TrainConfig
from deepserve.training.job import Job
from deepserve.training.optim import ConfigError
from deepserve.training.recipes import QUICK, _gpt, _mlp, _resnet, checkpointable
from deepserve.training.userdata import load_csv, load_image_folder, load_text

USER_SOURCES = ("csv", "images", "text")
# Fewest optimizer steps a run on your data is given (unless --epochs says otherwise): a folder of
# 45 images is one step an epoch, and 30 epochs of it learn little. Early stopping ends it sooner.
MIN_STEPS = 300

# (trainer, model, default config, quick config, default training settings)
_PLANS: dict[str, tuple[str, str, Any, Any, TrainConfig]] = {
    "csv": (
        "supervised",
        "mlp",
        _mlp([64, 32], 0.1),
        _mlp([8], 0.0),
        TrainConfig(epochs=100, batch_size=32, lr=1e-3, patience=15),
    ),
    "images": (
        "supervised",
        "resnet",
        _resnet(16, [16, 32, 64]),
        _resnet(8, [8, 16]),
        TrainConfig(epochs=30, batch_size=32, lr=2e-3, patience=6),
    ),
    "text": ("language", "gpt", None, None, TrainConfig(epochs=5, batch_size=32, lr=3e-3, patience=3)),
}


def _load(args: argparse.Namespace) -> Any:
    if args.what == "csv":
        if not args.label:
            raise ConfigError("`deepserve train csv PATH` needs --label COLUMN (the column to predict)")
        return load_csv(args.path, args.label, args.task, scaler=args.scaler, one_hot=args.one_hot)
    if args.what == "images":
        if args.image_size < 4:
            raise ConfigError(f"--image-size must be at least 4, got {args.image_size}")
        return load_image_folder(args.path, args.image_size)
    if args.context < 2:
        raise ConfigError(f"--context must be at least 2, got {args.context}")
    return load_text(args.path, args.context)


def default_model_name(stem: str) -> str:
    """The data file's name as a plain model-store name ("My data (v2).csv" -> "My-data-v2"): only
    letters, digits and inner '.', '_', '-', no "..", at most 128 characters (export checks it)."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", stem)).strip("-._")[:128].rstrip("-._")
    return name or "custom"


def optimizer_steps_per_epoch(rows: int, cfg: TrainConfig) -> int:
    """As the training loaders batch: split across torchrun's ranks, and without the last partial
    batch once there is more than one batch (training/supervised.py, training/generative.py)."""
    per_rank = rows // int(os.environ.get("WORLD_SIZE", "1"))
    batches = per_rank // cfg.batch_size if per_rank > cfg.batch_size else 1
    return max(1, math.ceil(batches / cfg.grad_accum))


def make_user_job(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[Job, str]:
    data = _load(args)
    trainer, model, config, quick_config, train = _PLANS[args.what]
    if args.what == "text":
        config = _gpt(args.context, 4, 4, 128)
        quick_config = _gpt(args.context, 1, 2, 32)
    cfg = (QUICK if args.quick else train).with_overrides(**overrides)
    if not args.quick and overrides.get("epochs") is None:
        per_epoch = optimizer_steps_per_epoch(len(data.train), cfg)
        cfg = replace(cfg, epochs=max(cfg.epochs, math.ceil(MIN_STEPS / per_epoch)))
    stem = Path(args.path).stem
    out = args.out or Path("runs") / f"{args.what}-{stem}"
    model_config = (quick_config if args.quick else config)(data)
    if args.grad_checkpoint:
        model_config["grad_checkpoint"] = checkpointable(model)
    augment = tuple(args.augment) if args.what == "images" else ()
    if args.augment and args.what != "images":
        raise ConfigError("--augment applies to image folders (deepserve train images FOLDER)")
    job = Job(
        "custom",
        model,
        model_config,
        data,
        cfg,
        out,
        augment=augment,
        progress=args.progress,
        # what `deepserve export` names the model by default: the data's own name
        meta={"name": default_model_name(stem), **({"augment": list(augment)} if augment else {})},
    )
    return job, trainer
