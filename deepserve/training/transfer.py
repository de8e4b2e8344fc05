"""The guide's transfer-learning regimes: what trains, at which learning rate, from which epoch.

    scratch    random init, every layer at the base lr (the baseline)
    frozen     pretrained encoder frozen (eval mode: no dropout, BatchNorm statistics kept), only the
               head trains
    finetune   everything trains; the encoder at ``encoder_lr`` x the head's lr (differential rates)
    gradual    as finetune, but layers are unfrozen top-down over epochs: epoch 1 trains the head,
               each later epoch unfreezes ``unfreeze_per_epoch`` more layer groups (ULMFiT; training
               the head first also keeps a random head's gradients from distorting the pretrained
               features, Kumar et al. 2022)

Layers are ``groups.layer_groups`` (bottom to top; the last is the head). The regime comes from
``TrainConfig.extra`` (``regime``, ``encoder_lr``, ``unfreeze_per_epoch``), so the checkpoint's
train_config records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from deepserve.training.groups import layer_groups, layer_modules
from deepserve.training.optim import ConfigError, ParamGroups

REGIMES = ("scratch", "frozen", "finetune", "gradual")


@dataclass(frozen=True)
class TransferPlan:
    regime: str = "finetune"
    encoder_lr: float = 0.1  # encoder lr = this x the head's lr (finetune, gradual)
    unfreeze_per_epoch: int = 1  # gradual: layer groups unfrozen per epoch, top-down

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ConfigError(f"unknown transfer regime {self.regime!r}; choose one of {', '.join(REGIMES)}")
        if not 0 < self.encoder_lr <= 1 or self.unfreeze_per_epoch < 1:
            raise ConfigError(
                f"encoder_lr must be in (0, 1] and unfreeze_per_epoch at least 1, got {self.encoder_lr}, "
                f"{self.unfreeze_per_epoch}"
            )

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> TransferPlan:
        keys = ("regime", "encoder_lr", "unfreeze_per_epoch")
        return cls(**{k: extra[k] for k in keys if k in extra})

    @property
    def pretrained(self) -> bool:
        return self.regime != "scratch"


Group = tuple[str, list[nn.Parameter]]


def split_head(model: nn.Module) -> tuple[list[Group], Group]:
    """(encoder groups bottom to top, the head group)."""
    groups = layer_groups(model)
    if len(groups) < 2:
        raise ConfigError(f"{type(model).__name__} has no separate head to transfer onto")
    return groups[:-1], groups[-1]


def param_groups(model: nn.Module, plan: TransferPlan, lr: float) -> ParamGroups:
    """Optimizer param groups, the head's first (the loop reports that lr): one per layer group, so
    the differential rates are visible in ``optimizer.param_groups``."""
    encoder, (head_name, head) = split_head(model)
    out: ParamGroups = [{"params": head, "lr": lr, "name": head_name}]
    if plan.regime == "frozen":
        return out
    encoder_lr = lr if plan.regime == "scratch" else lr * plan.encoder_lr
    out += [{"params": params, "lr": encoder_lr, "name": name} for name, params in reversed(encoder)]
    return out


def trainable_groups(plan: TransferPlan, n_encoder: int, epoch: int) -> int:
    """How many encoder groups (counted from the top) train in ``epoch`` (1-based)."""
    if plan.regime == "frozen":
        return 0
    if plan.regime == "gradual":
        return min(n_encoder, (epoch - 1) * plan.unfreeze_per_epoch)
    return n_encoder


class Unfreezer:
    """``before_epoch`` hook: sets ``requires_grad`` per layer group and puts frozen layers in eval.

    ``first_epoch``: the regime's epoch that the loop's epoch 1 is (2 when the head-only epoch of
    gradual unfreezing already ran on cached features).
    """

    def __init__(self, plan: TransferPlan, first_epoch: int = 1) -> None:
        self.plan, self.first_epoch = plan, first_epoch
        self.log: list[tuple[int, list[str]]] = []  # (regime epoch, trainable groups) as applied

    def __call__(self, model: nn.Module, loop_epoch: int) -> None:
        epoch = loop_epoch + self.first_epoch - 1
        encoder, (head_name, _) = split_head(model)
        n = trainable_groups(self.plan, len(encoder), epoch)
        trainable = {name for name, _ in encoder[len(encoder) - n :]} | {head_name}
        for name, params in encoder:
            for p in params:
                p.requires_grad_(name in trainable)
        modules = dict(layer_modules(model))
        for name, _ in encoder:
            if name in modules and name not in trainable:
                modules[name].eval()  # dropout off, BatchNorm running statistics frozen too
        self.log.append((epoch, [name for name, _ in [*encoder, (head_name, [])] if name in trainable]))
