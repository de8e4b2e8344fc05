"""The guide's preprocessing choices for your data: scalers, one-hot columns, image augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepserve.training.augment import build_augment, random_flip
from deepserve.training.features import TabularTransform, scaler_stats
from deepserve.training.userdata import load_csv


def test_scalers_fit_the_training_rows() -> None:
    x = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [100.0, 5.0]])
    center, scale = scaler_stats(x, "minmax")
    assert center.tolist() == [0.0, 5.0] and scale.tolist() == [100.0, 1.0]  # a constant column keeps 1
    center, scale = scaler_stats(x, "robust")
    assert center[0] == pytest.approx(1.5) and scale[0] == pytest.approx(26.5 - 0.75)  # median, IQR
    center, scale = scaler_stats(x, "standard")
    assert center[0] == pytest.approx(25.75) and scale[0] == pytest.approx(float(x[:, 0].std()))
    assert scaler_stats(x, "none")[1].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown scaler"):
        scaler_stats(x, "log")


def test_transform_scales_numeric_columns_and_one_hots_codes() -> None:
    t = TabularTransform([1.0, 0.0, 10.0], [2.0, 1.0, 5.0], {1: 3})
    out = t(torch.tensor([[3.0, 2.0, 20.0], [1.0, 0.0, 10.0], [1.0, 7.0, 10.0]]))
    assert t.out_features == 5
    assert out.tolist() == [[1.0, 2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]


def _mixed_csv(path: Path, rows: int = 60) -> Path:
    g = torch.Generator().manual_seed(0)
    colours = ["red", "green", "blue"]
    lines = ["size,colour,zone,label"]
    for i in range(rows):
        size = float(torch.rand(1, generator=g)) * 100
        colour = colours[i % 3]
        lines.append(f"{size:.2f},{colour},{i % 4},{'yes' if colour == 'red' or size > 80 else 'no'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_hot_alone_encodes_every_text_column(tmp_path: Path) -> None:
    data = load_csv(_mixed_csv(tmp_path / "m.csv"), "label", one_hot=[], scaler="minmax")
    prep = data.preprocessing
    assert prep["features"] == ["size", "colour", "zone"] and prep["categories"] == {
        "colour": ["blue", "green", "red"]
    }
    assert prep["scaler"] == "minmax" and prep["mean"][1] == 0.0 and prep["std"][1] == 1.0
    x = data.train.tensors[0]
    assert x.shape[1] == 2 + 3  # size, zone scaled; colour as three 0/1 columns
    assert float(x[:, :2].min()) >= 0.0 and float(x[:, :2].max()) <= 1.0
    assert torch.equal(x[:, 2:].sum(1), torch.ones(len(x)))


def test_named_one_hot_columns_may_be_numeric_codes(tmp_path: Path) -> None:
    data = load_csv(_mixed_csv(tmp_path / "m.csv"), "label", one_hot=["colour", "zone"])
    assert data.preprocessing["categories"] == {
        "colour": ["blue", "green", "red"],
        "zone": ["0", "1", "2", "3"],
    }
    assert data.train.tensors[0].shape[1] == 1 + 3 + 4


def test_augmentations_keep_shape_and_only_move_pixels(tmp_path: Path) -> None:
    x = torch.rand(6, 3, 8, 8)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    augment = build_augment(("flip", "crop", "jitter"), mean, std)
    assert augment is not None and augment(x).shape == x.shape
    pixels = augment((x - 0.5) / 0.25) * 0.25 + 0.5
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6  # jitter clamps to [0, 1]
    torch.manual_seed(0)
    flipped = random_flip(x)
    for i in range(len(x)):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    assert build_augment((), mean, std) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment(("rotate",), mean, std)


def test_image_folder_trains_with_augmentation(tmp_path: Path) -> None:
    from deepserve.training.checkpoint import load_checkpoint
    from deepserve.training.train import main
    from tests.training.test_userdata import write_images

    folder = write_images(tmp_path / "img", {"dark": 30, "light": 200})
    out = tmp_path / "o"
    argv = ["images", str(folder), "--augment", "flip", "crop", "jitter", "--quick", "--out", str(out)]
    assert main([*argv, "--threads", "1", "--no-progress"]) == 0
    assert load_checkpoint(out / "checkpoint.pt").meta["augment"] == ["flip", "crop", "jitter"]
