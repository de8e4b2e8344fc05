"""Variant selection in a serving install: ONNX Runtime without torch (or torch without ONNX Runtime).

The backends' absence is simulated here; tests/e2e/test_lean_serve.py checks the same in a real
`.[serve]` venv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deepserve.handlers import load_handler
from deepserve.handlers import runtime as runtime_mod
from deepserve.handlers.base import ModelLoadError
from deepserve.handlers.runtime import open_eager, open_runtime, select_variant
from deepserve.store import ModelSpec

TORCH_MISSING = (
    r"has only TorchScript/torch\.export variants; install torch: pip install 'deepserve\[train\]'"
)


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_mod, "torch_available", lambda: False)


def test_onnx_is_chosen_without_torch(image_cls: Path, no_torch: None) -> None:
    assert select_variant(ModelSpec.read(image_cls)).file == "model.onnx"


def test_a_torch_only_model_names_the_extra(tabular_cls: Path, no_torch: None) -> None:
    with pytest.raises(ModelLoadError, match=rf"model tab-cls v1 {TORCH_MISSING}"):
        load_handler(tabular_cls)


def test_a_torch_override_without_torch_names_the_extra(image_cls: Path, no_torch: None) -> None:
    with pytest.raises(ModelLoadError, match=r"needs torch for model\.pt2 here \(install torch"):
        select_variant(ModelSpec.read(image_cls), runtime="pt2")


def test_cuda_without_a_gpu_onnxruntime_or_torch_says_both(
    image_cls: Path, no_torch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_mod, "ort_gpu_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"install torch.*'deepserve\[gpu\]'"):
        select_variant(ModelSpec.read(image_cls), device="cuda")


def test_no_eager_fallback_without_torch(tabular_cls: Path, tmp_path: Path, no_torch: None) -> None:
    """A source checkpoint is recorded, but rebuilding needs torch: the variant's message stands."""
    vdir = tmp_path / "tab-cls" / "1"
    shutil.copytree(tabular_cls, vdir)
    spec = json.loads((vdir / "model.json").read_text())
    (vdir / "model.json").write_text(json.dumps({**spec, "source": "checkpoint.pt"}))
    with pytest.raises(ModelLoadError, match=TORCH_MISSING) as caught:
        load_handler(vdir)
    assert "eager fallback" not in str(caught.value)
    with pytest.raises(ModelLoadError, match=r"the eager runtime rebuilds it with torch; install torch"):
        open_eager(vdir)


def test_open_runtime_refuses_a_torch_file_without_torch(image_cls: Path, no_torch: None) -> None:
    variant = next(v for v in ModelSpec.read(image_cls).variants if v.format == "torchscript")
    with pytest.raises(ModelLoadError, match=TORCH_MISSING):
        open_runtime(image_cls, variant)


def test_torch_files_serve_without_onnxruntime(image_cls: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_mod, "ort_available", lambda: False)
    assert select_variant(ModelSpec.read(image_cls)).format == "pt2"
    monkeypatch.setattr(runtime_mod, "torch_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"needs ONNX Runtime for model\.onnx; .*'deepserve\[serve\]'"):
        select_variant(ModelSpec.read(image_cls))
