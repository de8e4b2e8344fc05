"""Bad input and failed exports: clear errors, and never a half-written version directory."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

import deepserve.export.exporter as exporter
from deepserve.export.__main__ import main
from deepserve.export.errors import ExportError, ParityError, UnknownModelError
from deepserve.export.writers import Step
from deepserve.store import ModelSpec
from deepserve.training.checkpoint import CheckpointError
from deepserve.version_dir import VersionExistsError
from tests.export.cases import ExportCase, case, write_checkpoint


@pytest.fixture
def mlp_ckpt(tmp_path: Path) -> Path:
    return write_checkpoint(case("mlp"), tmp_path / "mlp.pt")


def _store_entries(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


def test_default_versions_count_up_and_existing_needs_force(mlp_ckpt: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = exporter.export_checkpoint(mlp_ckpt, store, name="m", skip_slow=True)
    second = exporter.export_checkpoint(mlp_ckpt, store, name="m", skip_slow=True)
    assert [p.name for p in first + second] == ["1", "2"]
    with pytest.raises(VersionExistsError, match="--force"):
        exporter.export_checkpoint(mlp_ckpt, store, name="m", version=1)
    before = (store / "m" / "1" / "model.json").stat().st_mtime_ns
    exporter.export_checkpoint(mlp_ckpt, store, name="m", version=1, force=True, skip_slow=True)
    assert (store / "m" / "1" / "model.json").stat().st_mtime_ns != before
    assert sorted(p.name for p in (store / "m").iterdir()) == ["1", "2"]  # no temp dirs left


def test_your_own_data_is_named_after_its_file_by_default(tmp_path: Path) -> None:
    """`deepserve train csv houses.csv` then `deepserve export` serves `houses`, not a second
    version of whatever else shares its architecture."""
    mlp = case("mlp")
    ckpt = write_checkpoint(dataclasses.replace(mlp, meta={**mlp.meta, "name": "houses"}), tmp_path / "h.pt")
    written = exporter.export_checkpoint(ckpt, tmp_path / "store", skip_slow=True)
    assert [str(p.relative_to(tmp_path / "store")) for p in written] == ["houses/1"]


def test_model_json_validates_and_round_trips(mlp_ckpt: Path, tmp_path: Path) -> None:
    (version_dir,) = exporter.export_checkpoint(mlp_ckpt, tmp_path / "s", name="m", skip_slow=True)
    spec = ModelSpec.read(version_dir)
    assert ModelSpec.model_validate_json(spec.model_dump_json()) == spec
    assert spec.task == "classification" and spec.labels == ["a", "b", "c"]
    assert spec.inputs[0].name == "features" and spec.inputs[0].shape == [-1, 5]
    assert spec.outputs[0].name == "logits" and spec.outputs[0].shape == [-1, 3]
    assert spec.metrics == {"accuracy": 0.5} and spec.max_batch_size == 256
    assert all(v.usable for v in spec.variants if v.precision == "fp32")


def _broken_torchscript(step: Step) -> Step:
    """model.pt written from a copy with perturbed weights: a real fp32 parity failure."""

    def write(plan, path):  # type: ignore[no-untyped-def]
        module = copy.deepcopy(plan.module)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05)
        step.write(dataclasses.replace(plan, module=module), path)

    return Step(step.file, step.format, step.precision, write, step.load, step.slow)


def test_fp32_parity_failure_names_the_variant_and_leaves_nothing(
    mlp_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_steps = exporter.steps
    monkeypatch.setattr(
        exporter,
        "steps",
        lambda plan: [_broken_torchscript(s) if s.file == "model.pt" else s for s in real_steps(plan)],
    )
    store = tmp_path / "store"
    with pytest.raises(ParityError, match=r"model\.pt \(torchscript\) failed parity: relative error"):
        exporter.export_checkpoint(mlp_ckpt, store, name="m", skip_slow=True)
    assert _store_entries(store) == []


def test_exception_mid_export_leaves_nothing(
    mlp_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    exporter.export_checkpoint(mlp_ckpt, store, name="m", skip_slow=True)  # v1 exists and must survive

    def boom(plan, path):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    real_steps = exporter.steps
    monkeypatch.setattr(
        exporter,
        "steps",
        lambda plan: [
            *real_steps(plan)[:2],
            Step("model.pt2", "pt2", "fp32", boom, real_steps(plan)[0].load),
        ],
    )
    with pytest.raises(RuntimeError, match="disk full"):
        exporter.export_checkpoint(mlp_ckpt, store, name="m", skip_slow=True)
    assert sorted(p.name for p in (store / "m").iterdir()) == ["1"]
    with pytest.raises(RuntimeError, match="disk full"):
        exporter.export_checkpoint(mlp_ckpt, store, name="m", version=1, force=True, skip_slow=True)
    assert (store / "m" / "1" / "model.json").is_file()  # --force keeps the old version on failure


def test_vae_failure_in_the_decoder_leaves_no_encoder_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = write_checkpoint(case("vae"), tmp_path / "vae.pt")
    real = exporter.write_version

    def failing(plan, *args, **kwargs):  # type: ignore[no-untyped-def]
        if plan.suffix == "-decoder":
            raise RuntimeError("decoder failed")
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(exporter, "write_version", failing)
    with pytest.raises(RuntimeError, match="decoder failed"):
        exporter.export_checkpoint(ckpt, tmp_path / "store", name="v", skip_slow=True)
    assert _store_entries(tmp_path / "store") == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", ".hidden", "a..b"])
def test_a_name_that_leaves_the_store_is_refused(mlp_ckpt: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(ExportError, match="plain model-store name"):
        exporter.export_checkpoint(mlp_ckpt, tmp_path / "store", name=name)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "store").exists()


def test_unknown_model_and_task(tmp_path: Path) -> None:
    bad = ExportCase("x", "mlp", case("mlp").config, {**case("mlp").meta, "task": "segmentation"})
    with pytest.raises(UnknownModelError, match="segmentation"):
        exporter.export_checkpoint(write_checkpoint(bad, tmp_path / "a.pt"), tmp_path / "s")
    ckpt = torch.load(write_checkpoint(case("mlp"), tmp_path / "b.pt"), weights_only=True)
    torch.save({**ckpt, "model_name": "no_such_model"}, tmp_path / "b.pt")
    with pytest.raises(UnknownModelError, match="no_such_model"):
        exporter.export_checkpoint(tmp_path / "b.pt", tmp_path / "s")
    assert main([str(tmp_path / "b.pt"), "--store", str(tmp_path / "s")]) == 1


def test_cli_errors_are_one_line(mlp_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert main([str(tmp_path / "missing.pt"), "--store", store]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    assert main([str(corrupt), "--store", store]) == 1
    err = capsys.readouterr().err
    assert "not a readable torch checkpoint" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError):
        exporter.export_checkpoint(corrupt, tmp_path / "store")
    # a CSV (or any text) handed over by mistake: torch.load fails deep in its legacy unpickler
    text = tmp_path / "data.csv"
    text.write_text("a,b,label\n1,2,x\n")
    assert main([str(text), "--store", store]) == 1
    err = capsys.readouterr().err
    assert "not a readable torch checkpoint" in err and len(err.strip().splitlines()) == 1
    assert main([str(mlp_ckpt), "--store", store, "--name", "m", "--version", "3"]) == 0
    assert "m/3" in capsys.readouterr().out
    assert main([str(mlp_ckpt), "--store", store, "--name", "m", "--version", "3"]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
