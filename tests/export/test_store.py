"""``deepserve store build``: trains + exports a recipe, and a second run reuses what is up to date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import export.store as store_mod
from export.errors import ExportError
from export.schema import ModelSpec


@pytest.fixture(autouse=True)
def frozen_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Others edit models/ and training/ while tests run in a shared checkout: pin the code hashes."""
    monkeypatch.setattr(store_mod, "code_hash", lambda kind: f"{kind}-v1")


def test_build_then_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    (first,) = store_mod.build_store(store, quick=True, names=["tabular-mlp"], progress=False)
    assert first == store / "tabular-mlp" / "1"
    spec = ModelSpec.read(first)
    parity = json.loads((first / "parity.json").read_text())
    assert spec.task == "classification" and parity["inputs"].startswith("sklearn breast_cancer, test split")
    assert set(parity["not_built"]) == {"model.fp16.pt", "model.bf16.pt2"} or set(parity["not_built"]) == {
        "model.fp16.pt"
    }
    stamp = json.loads((store / ".checkpoints" / "tabular-mlp-quick" / "stamp.json").read_text())
    assert stamp["versions"] == {"tabular-mlp": 1}

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("an up-to-date model was rebuilt")

    monkeypatch.setattr("export.exporter.export_checkpoint", no_training)
    monkeypatch.setattr("training.recipes.run_recipe", no_training)
    assert store_mod.build_store(store, quick=True, names=["tabular-mlp"], progress=False) == [first]


def test_changed_export_code_re_exports_into_the_same_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    store_mod.build_store(store, quick=True, names=["regression-mlp"], progress=False)
    monkeypatch.setattr(
        store_mod, "code_hash", lambda kind: f"{kind}-v2" if kind == "export" else f"{kind}-v1"
    )
    monkeypatch.setattr(
        "training.recipes.run_recipe", lambda *a, **k: pytest.fail("checkpoint was up to date")
    )
    (again,) = store_mod.build_store(store, quick=True, names=["regression-mlp"], progress=False)
    assert again == store / "regression-mlp" / "1"
    assert sorted(p.name for p in (store / "regression-mlp").iterdir()) == ["1"]
    assert ModelSpec.read(again).outputs[0].name == "predictions"


def test_unknown_name_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match="unknown store model"):
        store_mod.build_store(tmp_path, names=["nope"])
    assert store_mod.main(["build", "--store", str(tmp_path), "--only", "nope"]) == 1
    assert "unknown store model(s) nope" in capsys.readouterr().err
