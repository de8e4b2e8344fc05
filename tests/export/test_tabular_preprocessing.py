"""Scalers and one-hot columns chosen at training are baked into the exported graph: a client's raw row
(category index in a one-hot column) is served exactly as training transformed that row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepserve.export.exporter import export_checkpoint
from deepserve.handlers import load_handler
from deepserve.handlers.base import PayloadRequest
from deepserve.training.checkpoint import load_checkpoint
from deepserve.training.data import split_indices
from deepserve.training.train import main
from deepserve.training.userdata import load_csv


def _csv(path: Path, rows: int = 80) -> Path:
    gen = np.random.default_rng(0)
    lines = ["size,colour,weight,label"]
    for i in range(rows):
        colour = ("red", "green", "blue")[i % 3]
        size, weight = gen.normal(50, 20), gen.lognormal(3, 1)  # a skewed column: robust scaling's case
        lines.append(f"{size:.2f},{colour},{weight:.2f},{'yes' if colour == 'red' or size > 60 else 'no'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("scaler", ["standard", "minmax", "robust", "none"])
def test_served_rows_equal_the_training_time_transform(scaler: str, tmp_path: Path) -> None:
    data_csv = _csv(tmp_path / "shop.csv")
    argv = ["csv", str(data_csv), "--label", "label", "--scaler", scaler, "--one-hot", "--quick"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--threads", "1", "--no-progress"]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    prep = ckpt.meta["preprocessing"]
    assert prep["scaler"] == scaler and prep["categories"] == {"colour": ["blue", "green", "red"]}
    (version,) = export_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "store", skip_slow=True)
    assert json.loads((version / "categories.json").read_text()) == prep["categories"]

    with data_csv.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    test = [rows[i] for i in split_indices(len(rows))[2].tolist()]
    colours = prep["categories"]["colour"]
    client = [{"size": float(r["size"]), "colour": colours.index(r["colour"]), "weight": float(r["weight"])}
              for r in test]  # fmt: skip
    trained_on = load_csv(data_csv, "label", scaler=scaler, one_hot=[]).test.tensors[0]  # training's tensors
    with torch.no_grad():
        want = torch.softmax(ckpt.build()(trained_on), -1).numpy()
    for runtime in ("onnx", "torchscript", "pt2"):
        handler = load_handler(version, runtime=runtime, precision="fp32", threads=1)
        [out] = handler.predict_batch([handler.preprocess(PayloadRequest(client))])
        np.testing.assert_allclose(out["probabilities"], want, rtol=1e-4, atol=1e-6, err_msg=runtime)
