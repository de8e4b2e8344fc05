"""Convolutional nets of the guide (ch. 9, 13): LeNet, ResNet (+SE / CBAM / depthwise) and MobileNet.

One ResNet builder covers the tiny digits model (8x8, ``stem="small"``) and a ResNet-18-shaped
ImageNet model (224x224, ``stem="imagenet"``): depth, widths, input size and classes are config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepserve.models import register_model


def _check_image(x: torch.Tensor, channels: int, size: int) -> None:
    torch._assert(x.dim() == 4, "expected images of shape (B, C, H, W)")
    torch._assert(x.shape[1] == channels, "wrong number of image channels")
    torch._assert(x.shape[2] == size and x.shape[3] == size, "wrong image size (see config.image_size)")


# ----------------------------------------------------------------------------------------- LeNet
@dataclass
class LeNetConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.image_size < 4:
            raise ValueError(f"LeNet needs image_size >= 4 (two 2x2 poolings), got {self.image_size}")


class LeNet(nn.Module):
    """Conv -> Pool -> Conv -> Pool -> FC -> FC -> FC. 'same' padding so any size >= 4 works."""

    def __init__(self, config: LeNetConfig) -> None:
        super().__init__()
        self.config = config
        side = config.image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 6, S/2, S/2)
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, S/4, S/4)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.config.in_channels, self.config.image_size)
        return self.classifier(self.features(x))  # (B, K)


# ------------------------------------------------------------------------------- building blocks
class DepthwiseSeparableConv(nn.Sequential):
    """MobileNet's 3x3 depthwise (one filter per channel) then 1x1 pointwise (mixes channels)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


def conv3x3(in_channels: int, out_channels: int, stride: int, depthwise: bool) -> nn.Module:
    if depthwise:
        return DepthwiseSeparableConv(in_channels, out_channels, stride)
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)


class SqueezeExcitation(nn.Module):
    """Channel gates from global average pooling (Hu et al.)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.excitation = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excitation(x.mean(dim=(2, 3)))  # (B, C)
        return x * gate[:, :, None, None]  # (B, C, H, W)


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared MLP over average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc(x.mean(dim=(2, 3))) + self.fc(x.amax(dim=(2, 3))))  # (B, C)
        return x * gate[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7x7 conv over the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * torch.sigmoid(self.conv(maps))  # (B, C, H, W)


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (or 1x1 projection when the shape changes), then optional attention."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, se: bool, cbam: bool, depthwise: bool) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride, depthwise)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch, 1, depthwise)
        self.bn2 = nn.BatchNorm2d(out_ch)
        attention: list[nn.Module] = []
        if se:
            attention.append(SqueezeExcitation(out_ch))
        if cbam:
            attention += [ChannelAttention(out_ch), SpatialAttention()]
        self.attention = nn.Sequential(*attention)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, out, H/s, W/s)
        out = self.attention(self.bn2(self.conv2(out)))
        return torch.relu(out + self.shortcut(x))


# ---------------------------------------------------------------------------------------- ResNet
@dataclass
class ResNetConfig:
    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    stem_channels: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    se: bool = False
    cbam: bool = False
    depthwise: bool = False
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "small": one 3x3/1 conv

    def __post_init__(self) -> None:
        self.widths, self.blocks = tuple(self.widths), tuple(self.blocks)
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"ResNetConfig: widths {self.widths} and blocks {self.blocks} need equal length")
        if self.stem not in ("imagenet", "small"):
            raise ValueError(f"ResNetConfig.stem must be 'imagenet' or 'small', got {self.stem!r}")


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(c.in_channels, c.stem_channels, 7, 2, 3, bias=False),
                nn.BatchNorm2d(c.stem_channels), nn.ReLU(), nn.MaxPool2d(3, 2, 1),  # (B, C0, S/4, S/4)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(c.in_channels, c.stem_channels, 3, 1, 1, bias=False),
                nn.BatchNorm2d(c.stem_channels), nn.ReLU(),  # (B, C0, S, S)
            )
        stages: list[nn.Module] = []
        width = c.stem_channels
        for i, (out_ch, n_blocks) in enumerate(zip(c.widths, c.blocks, strict=True)):
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1  # each later stage halves the resolution once
                stages.append(BasicBlock(width, out_ch, stride, c.se, c.cbam, c.depthwise))
                width = out_ch
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(width, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.config.in_channels, self.config.image_size)
        x = self.stages(self.stem(x))  # (B, C, h, w)
        return self.fc(x.mean(dim=(2, 3)))  # global average pool -> (B, K)


@register_model("resnet")
def resnet(**config: object) -> ResNet:
    return ResNet(ResNetConfig(**config))  # type: ignore[arg-type]


@register_model("resnet18")
def resnet18(num_classes: int = 1000, **config: object) -> ResNet:
    """ResNet-18 for 3x224x224 ImageNet-style input; other ResNetConfig fields may be overridden."""
    defaults: dict[str, object] = {"in_channels": 3, "image_size": 224, "stem": "imagenet"}
    return ResNet(ResNetConfig(num_classes=num_classes, **{**defaults, **config}))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- MobileNet
@dataclass
class MobileNetConfig:
    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    widths: tuple[int, ...] = (32, 64, 128, 256)
    strides: tuple[int, ...] = (1, 1, 2, 2)  # strides[0] is the stem conv's

    def __post_init__(self) -> None:
        self.widths, self.strides = tuple(self.widths), tuple(self.strides)
        if len(self.widths) != len(self.strides) or not self.widths:
            raise ValueError(f"MobileNetConfig: widths {self.widths} and strides {self.strides} differ")


class MobileNet(nn.Module):
    """MobileNet-v1: a 3x3 stem conv, then [depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU]."""

    def __init__(self, config: MobileNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        layers: list[nn.Module] = [
            nn.Conv2d(c.in_channels, c.widths[0], 3, c.strides[0], 1, bias=False),
            nn.BatchNorm2d(c.widths[0]), nn.ReLU(),
        ]
        for in_ch, out_ch, stride in zip(c.widths[:-1], c.widths[1:], c.strides[1:], strict=True):
            layers += [
                nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),  # depthwise
                nn.BatchNorm2d(in_ch), nn.ReLU(),
                nn.Conv2d(in_ch, out_ch, 1, bias=False),  # pointwise
                nn.BatchNorm2d(out_ch), nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c.widths[-1], c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.config.in_channels, self.config.image_size)
        return self.fc(self.features(x).mean(dim=(2, 3)))  # (B, K)


@register_model("lenet")
def lenet(**config: object) -> LeNet:
    return LeNet(LeNetConfig(**config))  # type: ignore[arg-type]


@register_model("mobilenet")
def mobilenet(**config: object) -> MobileNet:
    return MobileNet(MobileNetConfig(**config))  # type: ignore[arg-type]
