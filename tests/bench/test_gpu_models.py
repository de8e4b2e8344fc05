"""The GPU check's ResNet-50-shaped model has ResNet-50's layout (its parameter count) and serves logits."""

from __future__ import annotations

import torch

from deepserve.bench.gpu_models import FULL, QUICK, bench_resnet50


def test_the_full_config_is_resnet50_with_a_ten_class_head() -> None:
    net = bench_resnet50(**FULL)
    # torchvision resnet50: 25,557,032 parameters with 1000 classes; its fc is 2048*1000+1000
    assert sum(p.numel() for p in net.parameters()) == 25_557_032 - (2048 * 1000 + 1000) + (2048 * 10 + 10)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert convs == 1 + 16 * 3 + 4  # stem, 16 bottlenecks of 3, 4 projection skips


def test_the_quick_config_maps_images_to_logits() -> None:
    net = bench_resnet50(**QUICK).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_importing_it_leaves_the_zoo_as_it_is() -> None:
    from deepserve.models import list_models

    assert "bench-resnet50" not in list_models()
