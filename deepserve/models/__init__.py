"""The model zoo: every architecture of the guide, registered by name.

A builder is a function taking keyword config and returning an ``nn.Module``. Builders are
registered once at import time; a second registration under the same name raises, so two
modules can never silently shadow each other (torchvision's ``register_model``).

    >>> from deepserve.models import build_model, list_models
    >>> net = build_model("resnet", num_classes=10, in_channels=1, image_size=8)

Models import only torch: no I/O, no device choice, no logging.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}

# Modules that register builders when imported. Kept explicit so `list_models()` is complete
# without the caller knowing where each architecture lives.
_ZOO_MODULES = ("mlp", "cnn", "rnn", "transformer", "bert", "vit", "gpt", "autoencoder", "gan")


def register_model(name: str | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering a builder under ``name`` (default: the function's name)."""

    def wrap(fn: ModelBuilder) -> ModelBuilder:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered (by {_REGISTRY[key].__module__})")
        _REGISTRY[key] = fn
        return fn

    return wrap


def _load_zoo() -> None:
    for module in _ZOO_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def build_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model from its config keywords (the ``config`` of a checkpoint)."""
    _load_zoo()
    try:
        builder = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None
    return builder(**config)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_zoo()
    return sorted(_REGISTRY)
