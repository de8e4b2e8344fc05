"""Image augmentation for training (the guide's data chapter), chosen by name with ``--augment``.

    flip     mirror left-right with probability 1/2
    crop     pad by 1/8 of the side (replicating the border) and crop back at a random offset
    jitter   brightness, contrast and (RGB) saturation each scaled by a factor in [0.8, 1.2]
    shift    the 1-pixel random shift the built-in digits recipes use

Training tensors are normalised, ``(pixels - mean) / std``; jitter works on pixels, so it undoes
the normalisation, jitters, clamps to [0, 1] and normalises again. Augmentation happens only in
training: the exported graph and the handler see the image as the client sends it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

AUGMENTATIONS = ("flip", "crop", "jitter", "shift")
JITTER = 0.2

Augment = Callable[[Tensor], Tensor]


def random_shift(x: Tensor, pad: int = 1) -> Tensor:
    """Shift every image by up to ``pad`` pixels in x and y (the augmentation the digits need)."""
    b, _, h, w = x.shape  # (B, C, H, W)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b)).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def random_flip(x: Tensor) -> Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: Tensor) -> Tensor:
    return random_shift(x, pad=max(1, x.shape[-1] // 8))


def colour_jitter(mean: list[float], std: list[float]) -> Augment:
    def jitter(x: Tensor) -> Tensor:
        m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        pixels = x * s + m  # (B, C, H, W) in [0, 1]

        def factor() -> Tensor:
            return 1 + (torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2 - 1) * JITTER

        pixels = pixels * factor()  # brightness
        grey = pixels.mean(dim=(1, 2, 3), keepdim=True)
        pixels = (pixels - grey) * factor() + grey  # contrast
        if x.shape[1] == 3:
            luma = pixels.mean(dim=1, keepdim=True)
            pixels = (pixels - luma) * factor() + luma  # saturation
        return (pixels.clamp(0, 1) - m) / s

    return jitter


def build_augment(names: tuple[str, ...], mean: list[float], std: list[float]) -> Augment | None:
    """One function applying ``names`` in the order given (None for none)."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}")
    steps: dict[str, Augment] = {
        "flip": random_flip,
        "crop": random_crop,
        "shift": random_shift,
        "jitter": colour_jitter(mean, std),
    }
    chosen = [steps[n] for n in names]
    if not chosen:
        return None

    def augment(x: Tensor) -> Tensor:
        for step in chosen:
            x = step(x)
        return x

    return augment
