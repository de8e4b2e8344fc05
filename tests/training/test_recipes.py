"""Every recipe trains in quick mode; its checkpoint rebuilds a model that reproduces the recorded metrics."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import TypeAdapter

from deepserve.store import GenerationDefaults, Preprocessing
from deepserve.training.checkpoint import Checkpoint, load_checkpoint
from deepserve.training.recipes import RECIPES, make_job, run_recipe
from tests.training.tiny_bert import use_tiny_bert

TASKS = {
    "digits-cnn": "classification",
    "digits-vit": "classification",
    "tabular-mlp": "classification",
    "regression-mlp": "regression",
    "docs-gpt": "text-generation",
    "docs-gpt-bytes": "text-generation",
    "docs-classifier": "classification",
    "digits-vae": "embedding",
    "digits-dcgan": "image-generation",
    # transfer learning (README, "Transfer learning"): trained on request, not by the store build
    "docs-transformer": "classification",
    "docs-bert-scratch": "classification",
    "docs-minilm-frozen": "classification",
    "docs-minilm-finetune": "classification",
    "docs-minilm-gradual": "classification",
    **{f"digits-transfer-{r}": "classification" for r in ("scratch", "frozen", "finetune", "gradual")},
}


def test_every_recipe_is_listed() -> None:
    assert set(RECIPES) == set(TASKS)


def recompute(name: str, ckpt: Checkpoint, out_dir: Path) -> dict[str, Any]:
    """Score the rebuilt model the way the trainer scored the trained one."""
    from deepserve.training.generative import gan_metrics, vae_metrics
    from deepserve.training.language import lm_loss
    from deepserve.training.loop import evaluate_loss
    from deepserve.training.supervised import evaluate

    job = make_job(name, out_dir, quick=True)
    model = ckpt.build()
    if RECIPES[name].trainer in ("supervised", "transfer"):
        return evaluate(model, job, job.data.test, torch.device("cpu"))
    if RECIPES[name].trainer == "language":
        val = torch.utils.data.DataLoader(job.data.val, batch_size=64)
        return {"loss": evaluate_loss(model, val, lm_loss, torch.device("cpu"))}
    if RECIPES[name].trainer == "vae":
        return vae_metrics(model, job)
    return gan_metrics(model, job, ckpt.config["latent_dim"], job.cfg.seed)


def check_meta(meta: dict[str, Any]) -> None:
    extra = ("target_mean", "target_std", "scaler", "categories")  # kept in meta, baked into the graph
    prep = {k: v for k, v in meta["preprocessing"].items() if k not in extra}
    TypeAdapter(Preprocessing).validate_python(prep)  # the dict export copies into model.json
    if "generation" in meta:
        GenerationDefaults.model_validate(meta["generation"])
    assert meta["data_fingerprint"].startswith("sha256:")
    assert meta["train_config"]["seed"] == 0


@pytest.mark.parametrize("name", sorted(TASKS))
def test_recipe_quick_checkpoint_round_trips(
    name: str, tmp_path: Path, tiny_bert_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if RECIPES[name].model == "bert" or RECIPES[name].requires:
        use_tiny_bert(monkeypatch, tiny_bert_folder)  # MiniLM itself: tests/export/test_minilm.py
    path = run_recipe(name, tmp_path / name, quick=True)
    assert path == tmp_path / name / "checkpoint.pt"
    assert (tmp_path / name / "curves.png").stat().st_size > 0
    report = json.loads((tmp_path / name / "metrics.json").read_text())
    assert report["history"] and report["task"] == TASKS[name]
    ckpt = load_checkpoint(path)
    assert ckpt.task == TASKS[name] and ckpt.meta["recipe"] == name
    check_meta(ckpt.meta)
    again = recompute(name, ckpt, tmp_path / "again")
    for key, value in again.items():
        if isinstance(value, float):
            assert value == pytest.approx(ckpt.meta["metrics"][key], rel=1e-4, abs=1e-6), key
        else:
            assert value == ckpt.meta["metrics"][key], key


def test_recipe_meta_carries_what_export_needs(tmp_path: Path) -> None:
    gpt = load_checkpoint(run_recipe("docs-gpt", tmp_path / "gpt", quick=True))
    gen = gpt.meta["generation"]
    assert gen["context_length"] == gpt.config["context_length"]
    assert gen["n_layer"] == gpt.config["n_layer"]
    assert gen["n_head"] * gen["head_dim"] == gpt.config["d_model"]
    report = json.loads((tmp_path / "gpt" / "metrics.json").read_text())
    assert report["sample"].startswith("The for statement") and len(report["sample"]) > 20
    assert report["test"]["unigram_baseline_loss"] > 0
    vae = load_checkpoint(run_recipe("digits-vae", tmp_path / "vae", quick=True))
    assert vae.meta["decoder_preprocessing"] == {"kind": "latent", "latent_dim": vae.config["latent_dim"]}
    assert vae.meta["generation"]["image_height"] == 8
    reg = load_checkpoint(run_recipe("regression-mlp", tmp_path / "reg", quick=True))
    assert len(reg.meta["preprocessing"]["target_mean"]) == len(reg.meta["preprocessing"]["targets"]) == 1


def test_topic_snippets_use_the_named_topics() -> None:
    from deepserve.training.data import DataError
    from deepserve.training.recipes import DOCS_TOPICS
    from deepserve.training.textdata import topic_snippets

    data = topic_snippets(topics=DOCS_TOPICS)
    assert data.labels == sorted(DOCS_TOPICS)
    assert set(data.test.tensors[2].tolist()) == set(range(len(DOCS_TOPICS)))  # every topic in test
    with pytest.raises(DataError, match="unknown reference topic"):
        topic_snippets(topics=("compound", "no-such-topic"))


def _covered(spans: list[tuple[int, int]]) -> set[int]:
    return {i for start, end in spans for i in range(start, end)}


@pytest.mark.parametrize("length", [128, 384])
def test_scored_snippets_share_no_byte_with_training_snippets(length: int) -> None:
    """The topic accuracy is honest: no val / test window holds a byte that any training window
    holds, val and test are apart too, and the snippets are exactly the bytes at those spans."""
    from deepserve.training.data import as_ids, topics_text
    from deepserve.training.recipes import DOCS_TOPICS
    from deepserve.training.textdata import snippet_spans, topic_snippets

    for topic in DOCS_TOPICS:
        text = topics_text()[topic]
        spans = snippet_spans(len(text), length)
        trained, val, test = (_covered(spans[s]) for s in ("train", "val", "test"))
        assert val and test and not (trained & val) and not (trained & test) and not (val & test), topic
        assert spans["val"][1][0] - spans["val"][0][0] == length // 2  # scored windows overlap by half
        data, ids = topic_snippets(length=length, topics=(topic,)), as_ids(text)
        for split in ("train", "val", "test"):
            expected = torch.stack([ids[start:end] for start, end in spans[split]])
            assert torch.equal(getattr(data, split).tensors[0], expected), (topic, split)


@pytest.mark.parametrize("flag, field", [("--patience", "patience"), ("--grad-clip", "grad_clip")])
def test_zero_turns_early_stopping_and_clipping_off(flag: str, field: str, tmp_path: Path) -> None:
    """`--patience 0` / `--grad-clip 0` are documented as "off": the recipe's value must not survive."""
    from deepserve.training.recipes import RECIPES, make_job
    from deepserve.training.train import build_parser, overrides

    def trained_with(*flags: str) -> object:
        args = build_parser().parse_args(["tabular-mlp", *flags])
        return getattr(make_job("tabular-mlp", tmp_path, overrides=overrides(args)).cfg, field)

    recipe_value = getattr(RECIPES["tabular-mlp"].train, field)
    assert recipe_value is not None  # the recipe sets it
    assert trained_with(flag, "0") is None
    assert trained_with(flag, "3") == 3
    assert trained_with() == recipe_value  # the flag left unset keeps the recipe's value
