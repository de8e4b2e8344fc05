"""``deepserve store build``: trains + exports a recipe, and a second run reuses what is up to date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deepserve.export.store as store_mod
from deepserve.export.errors import ExportError
from deepserve.store import ModelSpec


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

    monkeypatch.setattr("deepserve.export.exporter.export_checkpoint", no_training)
    monkeypatch.setattr("deepserve.training.recipes.run_recipe", no_training)
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
        "deepserve.training.recipes.run_recipe", lambda *a, **k: pytest.fail("checkpoint was up to date")
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


def test_default_build_trains_under_the_recipe_budget_and_stamps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import deepserve.training.recipes as recipes

    budgets: list[float | None] = []
    real = recipes.run_recipe

    def recorded(name: str, out_dir: Path, *, quick: bool = False, **kwargs: object) -> Path:
        budgets.append(kwargs.get("max_seconds"))  # type: ignore[arg-type]
        assert not quick
        return real(
            name, out_dir, quick=True
        )  # quick sizes keep the test fast; the budget path is what counts

    monkeypatch.setattr(recipes, "run_recipe", recorded)
    store = tmp_path / "store"
    (first,) = store_mod.build_store(store, names=["tabular-mlp"], progress=False, threads=1)
    budget = recipes.RECIPES["tabular-mlp"].store_seconds
    assert budget is not None and budgets == [budget]
    stamp = json.loads((store / ".checkpoints" / "tabular-mlp" / "stamp.json").read_text())
    assert stamp["max_seconds"] == budget
    assert "model.fp16.pt" not in json.loads((first / "parity.json").read_text())["not_built"]
    store_mod.build_store(store, names=["tabular-mlp"], progress=False)
    assert len(budgets) == 1  # reused
    changed = dataclasses.replace(recipes.RECIPES["tabular-mlp"], store_seconds=budget + 1)
    monkeypatch.setitem(recipes.RECIPES, "tabular-mlp", changed)
    (again,) = store_mod.build_store(store, names=["tabular-mlp"], progress=False)
    assert budgets == [budget, budget + 1] and again == first  # retrained into the same version


def test_full_build_has_no_budget_and_threads_are_restored() -> None:
    import torch

    from deepserve.training.recipes import RECIPES, store_recipes

    assert all(RECIPES[n].store_seconds for n in store_recipes())
    assert store_mod.default_names() == [*store_recipes(), "minilm"]
    assert "docs-classifier" in store_recipes() and "docs-minilm-gradual" not in store_recipes()
    assert store_mod.budget_for("docs-gpt", quick=False, full=False) == RECIPES["docs-gpt"].store_seconds
    assert store_mod.budget_for("docs-gpt", quick=False, full=True) is None
    assert store_mod.budget_for("docs-gpt", quick=True, full=False) is None
    assert store_mod.budget_for("minilm", quick=False, full=False) is None
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with store_mod.torch_threads(None):
            assert torch.get_num_threads() == 1
        with store_mod.torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_the_longest_budget_trains_beside_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training uses one thread, so on two cores the recipe with the longest budget gets a process
    of its own, only when it has to train and only for budgeted one-thread builds."""
    from deepserve.training import recipes

    monkeypatch.setattr(store_mod.os, "cpu_count", lambda: 2)
    names = ["tabular-mlp", "docs-classifier", "minilm"]
    assert recipes.RECIPES["docs-classifier"].store_seconds >= store_mod.ASIDE_SECONDS
    assert store_mod._aside(tmp_path, names, False, False, None) == "docs-classifier"
    assert store_mod._aside(tmp_path, names, True, False, None) is None  # quick: seconds each
    assert store_mod._aside(tmp_path, names, False, True, None) is None  # --full: no budgets
    assert store_mod._aside(tmp_path, names, False, False, 2) is None  # the cores are taken
    assert store_mod._aside(tmp_path, ["tabular-mlp", "minilm"], False, False, None) is None  # short budgets
    monkeypatch.setattr(store_mod.os, "cpu_count", lambda: 1)
    assert store_mod._aside(tmp_path, names, False, False, None) is None
