"""Transfer-learning jobs: a pretrained encoder, a new head, trained by one of transfer.py's regimes.

Sources (``TrainConfig.extra["source"]``):
    minilm       the MiniLM encoder's weights (encoders.py) under a ``bert`` classifier
    digits-0-4   a ResNet first trained here on sklearn's digits 0-4 (``pretrain_steps`` caps it),
                 then moved to the job's digits

A model with ``embed`` + ``head`` (the BERT classifier) trains its head-only phase - all of the
frozen regime, the first epoch of gradual unfreezing - on pooled sentence embeddings computed
once: seconds instead of an encoder pass per epoch, and the same model as training the head
behind a frozen encoder in eval mode. That phase runs ``extra["head_epochs"]`` epochs (early
stopping on) at ``extra["head_lr"]``; gradual unfreezing then goes on from its second epoch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from deepserve.models import build_model
from deepserve.training import distributed as ddp
from deepserve.training import encoders
from deepserve.training.config import TrainConfig, seed_everything
from deepserve.training.data import digits_classes
from deepserve.training.job import Job, finish
from deepserve.training.loop import Batch, FitResult, LossFn, fit
from deepserve.training.optim import ConfigError
from deepserve.training.supervised import EVAL_BATCH, evaluate, job_augment, loss_for, val_metric
from deepserve.training.transfer import TransferPlan, Unfreezer, param_groups, split_head

SOURCE_DIGITS = (0, 1, 2, 3, 4)
PRETRAIN = TrainConfig(epochs=15, batch_size=64, lr=3e-3, patience=None)


def trimmed_text_loss(smoothing: float = 0.0) -> LossFn:
    """Cross-entropy on (ids, mask, y) rows cut to the batch's longest real row (less padding to run);
    ``smoothing``: label smoothing, which keeps a fine-tuned encoder from growing overconfident."""

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        ids, mask, y = batch
        T = int(mask.sum(1).max())
        return F.cross_entropy(model(ids[:, :T], mask[:, :T]), y, label_smoothing=smoothing)

    return loss


def _pretrain_digits(job: Job, device: torch.device) -> dict[str, Tensor]:
    """A ResNet of the job's shape trained on digits 0-4 (never the job's classes); its head dropped."""
    source = digits_classes(SOURCE_DIGITS)
    model = build_model(job.model_name, **{**job.model_config, "num_classes": len(SOURCE_DIGITS)}).to(device)
    cfg = PRETRAIN.with_overrides(seed=job.cfg.seed, max_steps=job.cfg.extra.get("pretrain_steps"))
    train = DataLoader(source.train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                       generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    fit(model, train, DataLoader(source.val, batch_size=EVAL_BATCH), loss_for("classification", True),
        cfg, device=device, progress=job.progress)  # fmt: skip
    source_job = Job("pretrain", job.model_name, job.model_config, source, cfg, job.out_dir)
    job.meta["pretrained_on"] = {
        "data": source.source,
        "test_accuracy": evaluate(model, source_job, source.test, device)["accuracy"],
    }
    _, (head, _) = split_head(model)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}


def pretrained_state(job: Job, device: torch.device) -> dict[str, Tensor]:
    source = job.cfg.extra.get("source")
    if source == "minilm":
        folder = encoders.minilm_folder()
        enc = encoders.load_encoder(folder, max_length=job.data.preprocessing["max_length"],
                                    n_layer=job.model_config["n_layer"])  # fmt: skip
        job.meta["pretrained_on"] = {"encoder": encoders.MINILM_UPSTREAM, "layers": enc.config["n_layer"]}
        return enc.weights()
    if source == "digits-0-4":
        return _pretrain_digits(job, device)
    raise ConfigError(f"unknown transfer source {source!r}; choose minilm or digits-0-4")


@torch.no_grad()
def pooled(model: nn.Module, split: TensorDataset, device: torch.device) -> TensorDataset:
    """(pooled embedding, label) rows of a text split, encoder in eval mode."""
    model.eval()
    feats = []
    for ids, mask, _ in DataLoader(split, batch_size=EVAL_BATCH):
        T = int(mask.sum(1).max())
        feats.append(model.embed(ids[:, :T].to(device), mask[:, :T].to(device)).float().cpu())  # type: ignore[operator]
    return TensorDataset(torch.cat(feats), split.tensors[-1])


def _head_config(job: Job, plan: TransferPlan) -> TrainConfig:
    if plan.regime == "frozen":
        return job.cfg
    extra = job.cfg.extra  # gradual: the head phase has its own length and rate, and no time budget
    epochs, lr = int(extra.get("head_epochs", 30)), float(extra.get("head_lr", job.cfg.lr))
    return replace(job.cfg, epochs=epochs, lr=lr, patience=10, max_seconds=None)


def _fit_head_on_features(job: Job, model: nn.Module, device: torch.device, cfg: TrainConfig) -> FitResult:
    head: nn.Module = model.head  # type: ignore[assignment]
    train_f, val_f = pooled(model, job.data.train, device), pooled(model, job.data.val, device)

    def head_loss(module: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(module(batch[0]), batch[1])

    @torch.no_grad()
    def head_accuracy(module: nn.Module) -> dict[str, float]:
        module.eval()
        x, y = val_f.tensors
        return {"val_accuracy": float((module(x.to(device)).argmax(1).cpu() == y).float().mean())}

    generator = torch.Generator().manual_seed(cfg.seed)
    train = DataLoader(train_f, batch_size=cfg.batch_size, shuffle=True, generator=generator)
    result = fit(head, train, DataLoader(val_f, batch_size=EVAL_BATCH), head_loss, cfg, device=device,
                 val_metric=head_accuracy, progress=job.progress, trace_path=job.trace_path)  # fmt: skip
    # the head module is one layer group of the whole model ("head"), whatever it calls its own parts
    for row in (*result.history, *result.step_history):
        for key in [k for k in row if k.startswith("grad_norm.")]:
            row["grad_norm.head"] = row.pop(key)
    return result


def _fit_model(
    job: Job, model: nn.Module, plan: TransferPlan, device: torch.device, first_epoch: int = 1
) -> FitResult:
    unfreezer = Unfreezer(plan, first_epoch)
    text = job.data.modality == "text"
    smoothing = float(job.cfg.extra.get("label_smoothing", 0.0))
    loss = trimmed_text_loss(smoothing) if text else loss_for(job.data.task, job_augment(job))
    drop_last = len(job.data.train) > job.cfg.batch_size
    generator = torch.Generator().manual_seed(job.cfg.seed)
    train = DataLoader(job.data.train, batch_size=job.cfg.batch_size, shuffle=True, drop_last=drop_last,
                       generator=generator)  # fmt: skip
    result = fit(model, train, DataLoader(job.data.val, batch_size=EVAL_BATCH), loss, job.cfg, device=device,
                 val_metric=val_metric(job, device), progress=job.progress,
                 param_groups=param_groups(model, plan, job.cfg.lr), before_epoch=unfreezer,
                 trace_path=job.trace_path)  # fmt: skip
    job.meta["unfreezing"] += [{"epoch": e, "trainable": names} for e, names in unfreezer.log]
    return result


def _then(first: FitResult, second: FitResult) -> FitResult:
    """Two phases as one run: the second's epochs and steps numbered on from the first's."""
    shift, steps = len(first.history), first.steps
    second.history = [*first.history, *({**r, "epoch": r["epoch"] + shift} for r in second.history)]
    later = ({**r, "step": r["step"] + steps, "epoch": r["epoch"] + shift} for r in second.step_history)
    second.step_history = [*first.step_history, *later]
    second.best_epoch += shift
    second.steps += steps
    second.seconds += first.seconds
    return second


def _train(job: Job, model: nn.Module, plan: TransferPlan, device: torch.device, cached: bool) -> FitResult:
    job.meta["unfreezing"] = []
    if not cached:
        return _fit_model(job, model, plan, device)
    head = _fit_head_on_features(job, model, device, _head_config(job, plan))
    head_only = {"epoch": 1, "trainable": [split_head(model)[1][0]], "epochs": len(head.history)}
    job.meta["unfreezing"].append(head_only)
    if plan.regime == "frozen":
        return head
    return _then(head, _fit_model(job, model, plan, device, first_epoch=2))


def train_transfer(job: Job, ctx: ddp.DistContext | None = None) -> Path:
    """Single-process: build, load the pretrained encoder, train by the regime, score on test."""
    plan = TransferPlan.from_extra(job.cfg.extra)
    seed_everything(job.cfg.seed)
    device = ddp.pick_device(ddp.DistContext())
    model = build_model(job.model_name, **job.model_config).to(device)
    if plan.pretrained:
        missing = model.load_state_dict(pretrained_state(job, device), strict=False).missing_keys
        _, (head, _) = split_head(model)
        if any(not k.startswith(f"{head}.") for k in missing):
            raise ConfigError(f"the pretrained weights do not cover the encoder: missing {missing[:3]}")
    cached = plan.regime in ("frozen", "gradual") and hasattr(model, "embed") and hasattr(model, "head")
    result = _train(job, model, plan, device, cached)
    for p in model.parameters():
        p.requires_grad_(True)  # the checkpoint's model trains like any other if trained again
    metrics: dict[str, Any] = evaluate(model, job, job.data.test, device)
    job.meta["transfer"] = {
        "regime": plan.regime,
        "encoder_lr": plan.encoder_lr,
        "unfreeze_per_epoch": plan.unfreeze_per_epoch,
        "cached_features": cached,
    }
    finish(job, model, metrics, result, extra_summary={"transfer": job.meta["transfer"]})
    return job.checkpoint_path
