"""``deepserve train``: train a built-in recipe or the user's own data; write one checkpoint.

    deepserve train digits-cnn [--quick] [--out DIR] [--epochs N] [--seed S] ...
    deepserve train docs-gpt --max-seconds 120       (wall-clock budget; the lr decay fits it)
    deepserve train csv data.csv --label price [--task regression] [--scaler robust] [--one-hot]
    deepserve train images photos/ [--augment flip crop jitter]   (one sub-folder per class)
    deepserve train text notes.txt            (byte-level GPT)
    deepserve train docs-minilm-gradual       (transfer learning: see README, "Transfer learning")
    deepserve train docs-gpt --profile --grad-checkpoint   (trace.json of a few steps; less memory)
    torchrun --nproc_per_node 2 -m deepserve.training.train digits-cnn --quick     (DDP, gloo on CPU)

Bad input (missing label column, empty folder, not UTF-8, ...) exits with code 2 and one line
saying what is wrong; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from deepserve.training import distributed as ddp
from deepserve.training.augment import AUGMENTATIONS
from deepserve.training.config import OFF, OPTIMIZERS, SCHEDULERS
from deepserve.training.data import DataError
from deepserve.training.features import SCALERS
from deepserve.training.job import Job
from deepserve.training.optim import ConfigError
from deepserve.training.recipes import DDP_TRAINERS, RECIPES, make_job, recipe_for, run_job
from deepserve.training.userjobs import USER_SOURCES, make_user_job

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepserve train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", help=f"a recipe ({', '.join(RECIPES)}) or one of: {', '.join(USER_SOURCES)}")
    p.add_argument("path", nargs="?", type=Path, help="the CSV file / image folder / text file (user data)")
    p.add_argument("--quick", action="store_true", help="tiny model and a few steps (seconds; for tests)")
    p.add_argument(
        "--out", type=Path, help="output folder (default runs/<recipe>/; your data: runs/<source>-<name>/)"
    )
    user = p.add_argument_group("user data")
    user.add_argument("--label", help="CSV: the label column")
    user.add_argument(
        "--task", choices=("classification", "regression"), help="CSV: default guessed from labels"
    )
    user.add_argument("--image-size", type=int, default=32, help="images: resize to this square size")
    user.add_argument("--context", type=int, default=64, help="text: context length in bytes")
    user.add_argument(
        "--scaler", choices=SCALERS, default="standard", help="CSV: how numeric columns are scaled"
    )
    user.add_argument(
        "--one-hot",
        nargs="*",
        metavar="COLUMN",
        help="CSV: one-hot encode these columns (alone: every non-numeric column); send category indexes",
    )
    user.add_argument(
        "--augment", nargs="+", choices=AUGMENTATIONS, default=(), help="images: training augmentation"
    )
    t = p.add_argument_group("training (defaults come from the recipe)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--optimizer", choices=OPTIMIZERS)
    t.add_argument("--scheduler", choices=SCHEDULERS)
    t.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    t.add_argument("--grad-accum", type=int, help="accumulate gradients over N batches")
    t.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    t.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    t.add_argument(
        "--max-seconds", type=float, help="wall-clock training budget; the lr schedule ends with it"
    )
    t.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast on CPU")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument(
        "--profile",
        action="store_true",
        default=None,
        help="torch.profiler trace of a few steps -> trace.json; prints the top operators",
    )
    t.add_argument(
        "--grad-checkpoint",
        action="store_true",
        help="recompute transformer / GPT / ViT blocks in backward (less activation memory)",
    )
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: only on a terminal)",
    )
    return p


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "epochs",
            "seed",
            "batch_size",
            "lr",
            "weight_decay",
            "optimizer",
            "scheduler",
            "grad_accum",
            "max_steps",
            "max_seconds",
            "bf16",
            "threads",
            "profile",
        )
    }
    if args.grad_clip is not None:
        o["grad_clip"] = args.grad_clip or OFF
    if args.patience is not None:
        o["patience"] = args.patience or OFF
    for key in ("epochs", "batch_size", "grad_accum", "max_steps", "threads"):
        if o[key] is not None and o[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {o[key]}")
    if o["max_seconds"] is not None and o["max_seconds"] <= 0:
        raise ConfigError(f"--max-seconds must be positive, got {o['max_seconds']}")
    return o


def build_job(args: argparse.Namespace) -> tuple[Job, str]:
    if args.what in USER_SOURCES:
        if args.path is None:
            raise ConfigError(f"`deepserve train {args.what}` needs a path: deepserve train {args.what} PATH")
        return make_user_job(args, overrides(args))
    if args.what not in RECIPES:
        raise ConfigError(
            f"unknown recipe {args.what!r}; choose one of {', '.join(RECIPES)}, "
            f"or {', '.join(USER_SOURCES)} PATH for your own data"
        )
    out = args.out or Path("runs") / args.what
    job = make_job(
        args.what,
        out,
        quick=args.quick,
        overrides=overrides(args),
        progress=args.progress,
        grad_checkpoint=args.grad_checkpoint,
    )
    return job, recipe_for(args.what).trainer


def summary_line(job: Job) -> str:
    metrics = json.loads((job.out_dir / "metrics.json").read_text(encoding="utf-8")).get("test", {})
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    return f"wrote {job.checkpoint_path} ({shown})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    ctx = ddp.init_distributed()
    try:
        job, trainer = build_job(args)
        if ctx.enabled and trainer not in DDP_TRAINERS:
            raise ConfigError(f"{args.what} trains single-process only; run it without torchrun")
        if job.cfg.profile and trainer == "gan":  # its own alternating loop, not loop.fit
            raise ConfigError(f"--profile profiles loop.fit's steps; {args.what} trains with the GAN loop")
        threads = job.cfg.threads or (
            max(1, (os.cpu_count() or 1) // ctx.world_size) if ctx.enabled else None
        )
        if threads:
            torch.set_num_threads(threads)
        run_job(job, trainer, ctx)
    except (DataError, ConfigError) as exc:
        if ctx.is_main:
            print(f"deepserve train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        ddp.shutdown(ctx)
    if ctx.is_main:
        print(summary_line(job))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
