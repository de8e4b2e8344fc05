from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from deepserve.handlers import HANDLERS, load_handler
from deepserve.handlers.base import ModelLoadError, PayloadRequest
from deepserve.handlers.classification import ClassificationHandler
from deepserve.handlers.embedding import EmbeddingHandler
from deepserve.handlers.image_generation import ImageGenerationHandler
from deepserve.handlers.regression import RegressionHandler
from deepserve.store import ModelSpec
from tests.handlers.test_classification import answer


def test_handler_class_follows_the_task(
    image_cls: Path, regression: Path, text_embedding: Path, generator: Path
) -> None:
    assert type(load_handler(image_cls, load=False)) is ClassificationHandler
    assert type(load_handler(regression, load=False)) is RegressionHandler
    assert type(load_handler(text_embedding, load=False)) is EmbeddingHandler
    assert type(load_handler(generator, load=False)) is ImageGenerationHandler
    assert HANDLERS["text-generation"] == "deepserve.handlers.generation:TextGenerationHandler"


def test_unloaded_handler_says_so_and_load_is_idempotent(tabular_cls: Path) -> None:
    handler = load_handler(tabular_cls, load=False)
    item = handler.preprocess(PayloadRequest([1, 2, 3]))
    with pytest.raises(ModelLoadError, match=r"tab-cls v1 is not loaded; call load\(\) first"):
        handler.predict_batch([item])
    handler.load()
    runtime = handler.runtime  # type: ignore[attr-defined]
    handler.load()
    assert handler.runtime is runtime  # type: ignore[attr-defined]


def test_missing_or_corrupt_files_raise_model_load_error(image_cls: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.json is missing; .* is not a model-store version"):
        load_handler(tmp_path)
    (tmp_path / "model.json").write_text('{"name": "x"')
    with pytest.raises(ModelLoadError, match=r"model\.json is corrupt"):
        load_handler(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(image_cls, copy)
    (copy / "model.onnx").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime cannot load"):
        load_handler(copy)
    assert load_handler(copy, runtime="pt2").predict_batch  # other files still serve


def test_wordpiece_model_without_its_tokenizer(text_embedding: Path, tmp_path: Path) -> None:
    copy = tmp_path / "emb"
    shutil.copytree(text_embedding, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is missing"):
        load_handler(copy)


def test_eager_needs_its_source_checkpoint(tabular_cls: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"records no source checkpoint; eager fallback impossible"):
        load_handler(tabular_cls, runtime="eager")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export (export.exporter) of a registered zoo MLP: every variant file the store has."""
    from deepserve.export.exporter import export_checkpoint
    from deepserve.models import build_model
    from deepserve.training.checkpoint import Checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("exported")
    config = {"in_features": 3, "out_features": 2, "hidden": [8]}
    meta = {
        "task": "classification",
        "labels": ["no", "yes"],
        "preprocessing": {
            "kind": "tabular",
            "features": ["a", "b", "c"],
            "mean": [1.0, 2.0, 3.0],
            "std": [2.0, 1.0, 0.5],
        },
    }
    model = build_model("mlp", **config)
    ckpt = save_checkpoint(Checkpoint("mlp", config, model.state_dict(), meta), root / "checkpoint.pt")
    [vdir] = export_checkpoint(ckpt, root / "store", name="tab")
    return vdir


def test_every_exported_variant_and_eager_give_the_same_answer(exported: Path) -> None:
    rows = PayloadRequest([{"a": 1.0, "b": 2.5, "c": 3.0}, {"a": -1.0, "b": 0.0, "c": 9.0}])
    want = answer(load_handler(exported, threads=1), rows)
    for runtime, precision in [
        ("torchscript", None),
        ("pt2", None),
        ("eager", None),
        ("onnx", "fp16"),
        ("pt2", "bf16"),
    ]:
        handler = load_handler(exported, runtime=runtime, precision=precision, threads=1)
        got = answer(handler, rows)
        tol = 1e-5 if precision is None else 2e-2
        for g, w in zip(got, want, strict=True):
            assert list(g) == list(w) or precision is not None
            np.testing.assert_allclose(list(g.values()), list(w.values()), atol=tol)
        assert runtime in handler.runtime.describe().replace("torch.export", "pt2").replace(
            "onnxruntime", "onnx"
        )  # type: ignore[attr-defined]


def test_eager_is_the_fallback_when_no_variant_can_serve(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tab"
    shutil.copytree(exported, copy)
    for f in copy.glob("model.*"):
        if f.suffix != ".json":
            f.unlink()
    handler = load_handler(copy, threads=1)
    assert handler.runtime.describe().startswith("eager checkpoint.pt (fp32)")  # type: ignore[attr-defined]
    assert set(answer(handler, PayloadRequest([0.0, 1.0, 2.0]))) == {"no", "yes"}


def test_no_fallback_when_an_override_cannot_be_met_or_the_checkpoint_is_gone(
    exported: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "tab"
    shutil.copytree(exported, copy)
    with pytest.raises(ModelLoadError, match=r"no usable variant for device=cpu precision=int8"):
        load_handler(copy, precision="int8")
    for f in copy.glob("model.*"):
        if f.suffix != ".json":
            f.unlink()
    spec = ModelSpec.read(copy)
    spec.model_copy(update={"source": str(tmp_path / "gone.pt")}).write(copy)
    with pytest.raises(
        ModelLoadError, match=r"no usable variant .* The eager fallback failed too: .*gone\.pt not found"
    ):
        load_handler(copy)


def test_optional_inputs_tell_which_forms_may_be_left_out(tabular_cls: Path, text_cls: Path) -> None:
    assert load_handler(tabular_cls, load=False).optional_inputs == set()  # type: ignore[attr-defined]
    text = load_handler(text_cls, load=False)
    assert text.optional_inputs == {"attention_mask", "text"}  # type: ignore[attr-defined]
