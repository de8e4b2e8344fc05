"""DCGAN generator and discriminator (guide ch. 20, Radford et al.).

The generator maps a latent (B, Z) to images (B, C, S, S) in [-1, 1] (tanh): train it on images
scaled to [-1, 1]; export maps the output to [0, 1]. The discriminator returns one logit per image
(B, 1), no sigmoid: train with BCEWithLogits. ``image_size`` is a power of two >= 8: the nets go
4x4 <-> S x S in stride-2 stages, channels halving (generator) / doubling (discriminator) per stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepserve.models import register_model


@dataclass
class DCGANConfig:
    latent_dim: int = 32
    image_size: int = 8
    channels: int = 1
    base: int = 64

    def __post_init__(self) -> None:
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise ValueError(f"DCGANConfig.image_size must be a power of two >= 8 (8, 16, 32, 64), got {s}")

    @property
    def stages(self) -> int:
        return self.image_size.bit_length() - 3  # stride-2 stages between 4x4 and S x S


def _init_dcgan(module: nn.Module) -> None:
    """The paper's init: conv weights ~ N(0, 0.02), BN scale ~ N(1, 0.02)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        width = c.base * 2 ** (c.stages - 1)
        layers: list[nn.Module] = [  # (B, Z, 1, 1) -> (B, width, 4, 4)
            nn.ConvTranspose2d(c.latent_dim, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        ]
        for _ in range(c.stages - 1):
            layers += [  # doubles H and W, halves the channels
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2), nn.ReLU(),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, c.channels, 4, 2, 1, bias=False), nn.Tanh()]  # (B, C, S, S)
        self.main = nn.Sequential(*layers)
        self.apply(_init_dcgan)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        torch._assert(z.dim() == 2 and z.shape[1] == self.config.latent_dim, "latent must be (B, latent_dim)")
        return self.main(z[:, :, None, None])  # (B, C, S, S) in [-1, 1]


class DCGANDiscriminator(nn.Module):
    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        width = c.base
        layers: list[nn.Module] = [  # no BatchNorm on the input layer (DCGAN paper)
            nn.Conv2d(c.channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)
        ]
        for _ in range(c.stages - 1):
            layers += [  # halves H and W, doubles the channels
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2)
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))  # (B, width, 4, 4) -> (B, 1, 1, 1)
        self.main = nn.Sequential(*layers)
        self.apply(_init_dcgan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        torch._assert(x.dim() == 4 and x.shape[1] == c.channels, "expected images (B, C, H, W)")
        torch._assert(x.shape[2] == c.image_size and x.shape[3] == c.image_size, "wrong image size")
        return self.main(x).flatten(1)  # (B, 1) logits


@register_model("dcgan_generator")
def dcgan_generator(**config: object) -> DCGANGenerator:
    return DCGANGenerator(DCGANConfig(**config))  # type: ignore[arg-type]


@register_model("dcgan_discriminator")
def dcgan_discriminator(**config: object) -> DCGANDiscriminator:
    return DCGANDiscriminator(DCGANConfig(**config))  # type: ignore[arg-type]
