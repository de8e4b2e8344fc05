"""The GPU check's ResNet-50-shaped model: bottleneck blocks [3, 4, 6, 3], 3x224x224, seeded weights.

The zoo's ResNet has basic blocks only (ResNet-18/34 shapes); a GPU is judged on the
ResNet-50 shape (1x1-3x3-1x1 bottlenecks, 4x expansion, 25 M parameters, ~4 GFLOPs an image),
so this module builds that net and exports it the normal way (fp32 and fp16 ONNX with their
parity) into a store as ``bench-resnet50``. ``--quick`` keeps the shape (bottlenecks, four
stages) at tiny widths and 32x32 images, for the CPU dry run of bench/gpu_check.sh.

    python -m deepserve.bench.gpu_models --store STORE [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepserve.bench.models import IMAGENET_MEAN, IMAGENET_STD, _meta
from deepserve.models import list_models, register_model

NAME = "bench-resnet50"
FULL = {"width": 64, "image_size": 224, "blocks": [3, 4, 6, 3], "num_classes": 10}
QUICK = {"width": 4, "image_size": 32, "blocks": [1, 1, 1, 1], "num_classes": 10}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, mid: int, stride: int) -> None:
        super().__init__()
        out = mid * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out),
        )  # fmt: skip
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out:
            self.skip = nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed: torch.Tensor = self.body(x) + self.skip(x)
        return torch.relu(summed)


class BottleneckResNet(nn.Module):
    """torchvision's ResNet-50 layout: 7x7/2 stem, max-pool, four bottleneck stages, average pool."""

    def __init__(self, width: int, image_size: int, blocks: list[int], num_classes: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers: list[nn.Module] = []
        in_ch = width
        for stage, count in enumerate(blocks):
            mid = width * 2**stage
            for j in range(count):
                layers.append(Bottleneck(in_ch, mid, 2 if stage > 0 and j == 0 else 1))
                in_ch = mid * Bottleneck.expansion
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.stages(self.stem(x)).mean(dim=(2, 3))
        logits: torch.Tensor = self.fc(pooled)
        return logits


def bench_resnet50(**config: Any) -> BottleneckResNet:
    return BottleneckResNet(**config)


def _register() -> None:
    """Into the zoo only when exporting (the checkpoint is rebuilt by name): importing this module
    must not add a bench net to the zoo that ``list_models`` shows."""
    if NAME not in list_models():
        register_model(NAME)(bench_resnet50)


def resnet50_checkpoint(*, quick: bool, seed: int = 0) -> Any:
    from deepserve.training.checkpoint import Checkpoint

    torch.manual_seed(seed)
    config = dict(QUICK if quick else FULL)
    model = bench_resnet50(**config).eval()
    size = int(config["image_size"])  # type: ignore[call-overload]
    prep = {"kind": "image", "channels": 3, "height": size, "width": size,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD}  # fmt: skip
    return Checkpoint(NAME, config, model.state_dict(), _meta(NAME, prep))


def make_resnet50(store: Path, *, quick: bool) -> Path:
    """Export ``bench-resnet50`` into ``store`` (reused when a version is there); its version dir."""
    from deepserve.export.exporter import export_checkpoint
    from deepserve.training.checkpoint import save_checkpoint

    existing = sorted((store / NAME).glob("*/model.json"))
    if existing:
        return existing[-1].parent
    _register()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(resnet50_checkpoint(quick=quick), Path(tmp) / "checkpoint.pt")
        return export_checkpoint(ckpt, store, name=NAME)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="tiny widths, 32x32 (the CPU dry run)")
    args = p.parse_args(argv)
    print(f"{NAME}: {make_resnet50(args.store, quick=args.quick)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
