"""``--mar``: a TorchServe archive of the same files, with deepserve's TorchServe adapter as handler."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import deepserve.export.mar as mar
from deepserve.export.__main__ import main
from tests.export.cases import case, write_checkpoint


@pytest.mark.tools
def test_mar_holds_the_version_files_and_the_adapter(tmp_path: Path) -> None:
    if mar.archiver() is None:
        pytest.skip("torch-model-archiver missing (the torchserve extra)")
    ckpt = write_checkpoint(case("mlp"), tmp_path / "mlp.pt")
    store = tmp_path / "store"
    assert main([str(ckpt), "--store", str(store), "--name", "m", "--mar"]) == 0
    archive = store / "torchserve" / "m.mar"
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"model.json", "parity.json", "model.onnx", "model.pt", "model.pt2", "torchserve.py"} <= names
    assert "MAR-INF/MANIFEST.json" in names


def test_missing_archiver_is_skipped_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(mar, "archiver", lambda: None)
    assert mar.build_mar(tmp_path / "m" / "1") is None
    assert "torch-model-archiver is not installed" in capsys.readouterr().err
