"""Tiny configs, inputs and losses for every registered model (shared by the zoo tests).

Each case says how to build a small instance, how to make a batch, the output shape and a loss to
overfit. A model registered without a case here fails ``test_every_model_has_a_case``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from deepserve.models.autoencoder import vae_loss

Batch = tuple[torch.Tensor, ...]


@dataclass
class Case:
    name: str
    config: dict[str, Any]
    make_inputs: Callable[[int, torch.Generator], Batch]  # (batch size, generator) -> forward args
    out_shape: Callable[[int], tuple[int, ...]]  # batch size -> shape of the (first) output
    loss: Callable[[Any, Batch, torch.Tensor], torch.Tensor]  # (output, inputs, target) -> scalar
    make_target: Callable[[int, torch.Generator], torch.Tensor] = field(
        default=lambda b, g: torch.randint(0, 3, (b,), generator=g)
    )
    lr: float = 1e-2  # AdamW learning rate for the overfitting test
    other_lengths: Callable[[int, torch.Generator], Batch] | None = None  # text: inputs with another T
    id: str = ""


def images(c: int, s: int) -> Callable[[int, torch.Generator], Batch]:
    return lambda b, g: (torch.rand(b, c, s, s, generator=g),)


def tokens(vocab: int, t: int) -> Callable[[int, torch.Generator], Batch]:
    """Right-padded rows of different lengths (at least 2 real tokens each)."""

    def make(b: int, g: torch.Generator) -> Batch:
        ids = torch.randint(1, vocab, (b, t), generator=g)
        lengths = torch.randint(2, t + 1, (b,), generator=g)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        return ids * mask, mask

    return make


def ce(out: torch.Tensor, _: Batch, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, target)


def next_token(out: torch.Tensor, inputs: Batch, _: torch.Tensor) -> torch.Tensor:
    ids = inputs[0]
    return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))


def recon_mse(out: torch.Tensor, inputs: Batch, _: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, inputs[0])


def vae_objective(out: tuple[torch.Tensor, ...], inputs: Batch, _: torch.Tensor) -> torch.Tensor:
    recon, mu, logvar = out
    return vae_loss(recon, inputs[0], mu, logvar, beta=0.1)[0]


def fixed_image(out: torch.Tensor, _: Batch, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, target)


def real_or_fake(out: torch.Tensor, _: Batch, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, target)


def _cls(k: int) -> Callable[[int], tuple[int, ...]]:
    return lambda b: (b, k)


TINY_TEXT = {"vocab_size": 32, "num_classes": 3, "dropout": 0.0}
CASES = [
    Case("mlp", {"in_features": 5, "out_features": 3, "hidden": (16, 8), "dropout": 0.0},
         lambda b, g: (torch.randn(b, 5, generator=g),), _cls(3), ce),
    Case("lenet", {"in_channels": 1, "image_size": 8, "num_classes": 3}, images(1, 8), _cls(3), ce),
    Case("resnet", {"in_channels": 1, "image_size": 8, "num_classes": 3, "stem_channels": 8,
                    "widths": (8, 16), "blocks": (1, 1), "se": True, "stem": "small"},
         images(1, 8), _cls(3), ce, id="digits-se"),
    Case("resnet", {"in_channels": 3, "image_size": 16, "num_classes": 3, "stem_channels": 8,
                    "widths": (8, 16), "blocks": (1, 1), "cbam": True, "depthwise": True},
         images(3, 16), _cls(3), ce, id="cbam-depthwise-imagenet-stem"),
    # ResNet-18 depth (2, 2, 2, 2) kept narrow for speed; test_model_registry checks the full shape
    Case("resnet18", {"num_classes": 3, "image_size": 16, "stem_channels": 8, "widths": (8, 8, 8, 8)},
         images(3, 16), _cls(3), ce),
    Case("mobilenet", {"in_channels": 1, "image_size": 8, "num_classes": 3, "widths": (8, 16),
                       "strides": (1, 2)}, images(1, 8), _cls(3), ce),
    Case("rnn", {**TINY_TEXT, "embed_dim": 8, "hidden": 8, "num_layers": 2}, tokens(32, 6), _cls(3), ce,
         other_lengths=tokens(32, 11), id="bilstm"),
    Case("rnn", {**TINY_TEXT, "embed_dim": 8, "hidden": 8, "cell": "gru", "bidirectional": False},
         tokens(32, 6), _cls(3), ce, other_lengths=tokens(32, 11), id="gru"),
    Case("transformer", {**TINY_TEXT, "d_model": 16, "n_head": 2, "n_layer": 1, "d_ff": 32, "max_len": 16},
         tokens(32, 6), _cls(3), ce, other_lengths=tokens(32, 11)),
    Case("bert", {**TINY_TEXT, "hidden_size": 16, "n_layer": 1, "n_head": 2, "intermediate_size": 32,
                  "max_position": 16}, tokens(32, 6), _cls(3), ce, other_lengths=tokens(32, 11)),
    Case("vit", {"image_size": 8, "patch_size": 4, "num_classes": 3, "d_model": 16, "n_head": 2, "n_layer": 1,
                 "d_ff": 32, "dropout": 0.0}, images(1, 8), _cls(3), ce),
    Case("gpt", {"vocab_size": 32, "context_length": 16, "n_layer": 2, "n_head": 2, "d_model": 16},
         lambda b, g: (torch.randint(0, 32, (b, 8), generator=g),), lambda b: (b, 8, 32), next_token),
    Case("autoencoder", {"image_size": 8, "latent_dim": 4, "hidden": (8, 16)}, images(1, 8),
         lambda b: (b, 1, 8, 8), recon_mse),
    # binary pixels: the BCE floor is then 0, so "the loss halves" is reachable
    Case("vae", {"image_size": 8, "latent_dim": 4, "hidden": (8, 16)},
         lambda b, g: ((torch.rand(b, 1, 8, 8, generator=g) > 0.5).float(),),
         lambda b: (b, 1, 8, 8), vae_objective, lr=3e-2),
    Case("dcgan_generator", {"latent_dim": 8, "image_size": 8, "base": 8},
         lambda b, g: (torch.randn(b, 8, generator=g),), lambda b: (b, 1, 8, 8), fixed_image,
         make_target=lambda b, g: torch.rand(b, 1, 8, 8, generator=g) * 2 - 1),
    Case("dcgan_discriminator", {"image_size": 8, "base": 8}, images(1, 8), _cls(1), real_or_fake,
         make_target=lambda b, g: torch.randint(0, 2, (b, 1), generator=g).float()),
]
for case in CASES:
    case.id = case.id or case.name
