"""Convolutional autoencoder and VAE (guide ch. 21).

Images are expected in [0, 1] (e.g. digits / 16): decoders end in a sigmoid, so ``decode`` gives
[0, 1] too. Each entry of ``hidden`` is one stride-2 conv stage (channels), so ``image_size`` must be
a multiple of 2 ** len(hidden). The encoder output (autoencoder: z; VAE: mu) is the embedding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from deepserve.models import register_model


@dataclass
class AutoencoderConfig:
    in_channels: int = 1
    image_size: int = 8
    latent_dim: int = 16
    hidden: tuple[int, ...] = (32, 64)

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if not self.hidden or self.image_size % (2 ** len(self.hidden)):
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2**len(hidden) = "
                             f"{2 ** len(self.hidden)}; use fewer hidden stages or a larger image")


@dataclass
class VAEConfig(AutoencoderConfig):
    beta: float = 1.0  # weight of the KL term (read by the training loop; vae_loss takes it explicitly)


class ConvEncoder(nn.Sequential):
    """(B, C, S, S) -> (B, out_features): stride-2 conv stages, flatten, linear."""

    def __init__(self, c: AutoencoderConfig, out_features: int) -> None:
        layers: list[nn.Module] = []
        width = c.in_channels
        for h in c.hidden:
            layers += [nn.Conv2d(width, h, 3, 2, 1), nn.BatchNorm2d(h), nn.ReLU()]  # halves H and W
            width = h
        side = c.image_size // 2 ** len(c.hidden)
        super().__init__(*layers, nn.Flatten(), nn.Linear(width * side * side, out_features))


class ConvDecoder(nn.Module):
    """(B, Z) -> (B, C, S, S) in [0, 1]: linear, then stride-2 transposed convs mirroring the encoder."""

    def __init__(self, c: AutoencoderConfig) -> None:
        super().__init__()
        self.side = c.image_size // 2 ** len(c.hidden)
        self.width = c.hidden[-1]
        self.fc = nn.Linear(c.latent_dim, self.width * self.side * self.side)
        layers: list[nn.Module] = [nn.ReLU()]
        widths = [*reversed(c.hidden), c.in_channels]
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.ConvTranspose2d(a, b, 4, 2, 1))  # doubles H and W
            if i < len(widths) - 2:
                layers += [nn.BatchNorm2d(b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.width, self.side, self.side)  # (B, C_last, s, s)
        images: torch.Tensor = self.net(x)  # (B, C, S, S)
        return images


# torch._assert is unannotated in torch; the ignores keep mypy --strict (which reaches this file
# through training.generative) quiet.
def _check_image(x: torch.Tensor, c: AutoencoderConfig) -> None:
    torch._assert(x.dim() == 4 and x.shape[1] == c.in_channels, "expected images (B, C, H, W)")  # type: ignore[no-untyped-call]
    torch._assert(x.shape[2] == c.image_size and x.shape[3] == c.image_size, "wrong image size")  # type: ignore[no-untyped-call]


def _check_latent(z: torch.Tensor, c: AutoencoderConfig) -> None:
    torch._assert(z.dim() == 2 and z.shape[1] == c.latent_dim, "latent must be (B, latent_dim)")  # type: ignore[no-untyped-call]


class Autoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvEncoder(config, config.latent_dim)
        self.decoder = ConvDecoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.config)
        z: torch.Tensor = self.encoder(x)  # (B, Z)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        _check_latent(z, self.config)
        images: torch.Tensor = self.decoder(z)  # (B, C, S, S) in [0, 1]
        return images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))  # reconstruction (B, C, S, S)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvEncoder(config, 2 * config.latent_dim)  # mu and logvar side by side
        self.decoder = ConvDecoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image(x, self.config)
        mu, logvar = self.encoder(x).chunk(2, dim=1)  # 2 x (B, Z)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        _check_latent(z, self.config)
        images: torch.Tensor = self.decoder(z)  # (B, C, S, S) in [0, 1]
        return images

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps while training; the mean in eval mode (deterministic inference)."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(
    recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon_loss, kl), each summed over pixels / latent dims and averaged over the batch.

    recon_loss is binary cross-entropy on [0, 1] images, written out in fp32 because
    F.binary_cross_entropy refuses to run under autocast.
    """
    r = recon.float().clamp(1e-6, 1 - 1e-6)
    t = x.float()
    batch = x.shape[0]
    recon_loss = -(t * torch.log(r) + (1 - t) * torch.log(1 - r)).sum() / batch
    kl = -0.5 * torch.sum(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp()) / batch
    return recon_loss + beta * kl, recon_loss, kl


@register_model("autoencoder")
def autoencoder(**config: object) -> Autoencoder:
    return Autoencoder(AutoencoderConfig(**config))  # type: ignore[arg-type]


@register_model("vae")
def vae(**config: object) -> VAE:
    return VAE(VAEConfig(**config))  # type: ignore[arg-type]
