from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deepserve.export.torchscript import write_torchscript
from deepserve.handlers import runtime as runtime_mod
from deepserve.handlers.base import ModelLoadError
from deepserve.handlers.ort_runtime import OrtRuntime, providers_for, session_options
from deepserve.handlers.runtime import open_runtime, select_variant
from deepserve.store import ModelSpec, Variant
from tests.handlers.tiny import PixelNet


def _spec(vdir: Path) -> ModelSpec:
    return ModelSpec.read(vdir)


def test_cpu_default_is_fp32_onnx(image_cls: Path) -> None:
    assert select_variant(_spec(image_cls)).file == "model.onnx"


def test_cuda_prefers_fp16_onnx_when_ort_has_a_gpu(image_cls: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_mod, "ort_gpu_available", lambda: True)
    assert select_variant(_spec(image_cls), device="cuda").file == "model.fp16.onnx"


def test_cuda_without_ort_gpu_uses_torch_and_never_an_unusable_file(
    image_cls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_mod, "ort_gpu_available", lambda: False)
    # fp16 exists only as ONNX (no GPU provider) and as an unusable TorchScript file -> fp32 pt2
    chosen = select_variant(_spec(image_cls), device="cuda")
    assert (chosen.file, chosen.precision) == ("model.pt2", "fp32")


def test_unusable_variant_is_refused_even_when_asked(image_cls: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.fp16\.pt \(torchscript/fp16, unusable: parity failed"):
        select_variant(_spec(image_cls), precision="fp16", runtime="torchscript")


@pytest.mark.parametrize(
    ("precision", "runtime", "file"),
    [(None, "torchscript", "model.pt"), (None, "pt2", "model.pt2"), ("fp16", None, "model.fp16.onnx")],
)
def test_overrides_are_honoured(
    image_cls: Path, precision: str | None, runtime: str | None, file: str
) -> None:
    assert select_variant(_spec(image_cls), precision=precision, runtime=runtime).file == file


def test_missing_file_is_skipped_when_the_directory_is_known(image_cls: Path) -> None:
    spec = _spec(image_cls)
    ghost = Variant(file="gone.onnx", format="onnx", precision="fp32", usable=True)
    spec = spec.model_copy(update={"variants": [ghost, *spec.variants]})
    assert select_variant(spec).file == "gone.onnx"
    assert select_variant(spec, version_dir=image_cls).file == "model.onnx"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "tensorflow"}, "unknown runtime 'tensorflow'"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ],
)
def test_unknown_override_names_the_choices(image_cls: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        select_variant(_spec(image_cls), **kwargs)


def _open(vdir: Path, **kwargs: str | None) -> runtime_mod.Runtime:
    return open_runtime(vdir, select_variant(_spec(vdir), **kwargs), threads=1)


def test_runtimes_agree_on_the_same_image_files(image_cls: Path) -> None:
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    ref = _open(image_cls)
    want = ref.run({"pixels": x})["logits"]
    assert ref.input_names == ["pixels"] and ref.output_names == ["logits"]
    for runtime in ("torchscript", "pt2"):
        got = _open(image_cls, runtime=runtime).run({"pixels": x})["logits"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    half = _open(image_cls, precision="fp16").run({"pixels": x})["logits"]
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, want, atol=2e-3 * np.abs(want).max())


def test_runtimes_agree_on_the_same_text_files(text_cls: Path) -> None:
    ids = np.array([[72, 105, 33, 0], [80, 121, 116, 104]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    outs = [
        _open(text_cls, runtime=r).run({"input_ids": ids, "attention_mask": mask})["logits"]
        for r in ("onnx", "torchscript", "pt2")
    ]
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_fp16_on_a_gpu_matches_fp32_on_the_cpu(image_cls: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = np.random.default_rng(3).random((4, 1, 8, 8), dtype=np.float32)
    want = _open(image_cls).run({"pixels": x})["logits"]
    gpu = open_runtime(image_cls, select_variant(_spec(image_cls), device="cuda"), device="cuda", threads=1)
    assert "fp16" in gpu.describe() and "CPUExecutionProvider" not in gpu.describe()
    np.testing.assert_allclose(gpu.run({"pixels": x})["logits"], want, atol=5e-3 * np.abs(want).max())


def test_ort_session_follows_the_serving_settings(image_cls: Path) -> None:
    import onnxruntime as ort

    variant = select_variant(_spec(image_cls))
    opts = session_options(variant, threads=2, spinning=False)
    assert opts.intra_op_num_threads == 2
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    rt = OrtRuntime(image_cls / "model.onnx", variant, device="cpu", threads=2, spinning=True)
    assert rt.describe() == "onnxruntime model.onnx (fp32) on CPUExecutionProvider, intra_op_threads=2"


def test_gpu_providers_come_first_and_cpu_stays_as_fallback() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda:1", available) == [
        ("TensorrtExecutionProvider", {"device_id": 1}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert providers_for("cpu", available) == ["CPUExecutionProvider"]


def test_native_fp16_onnx_io_is_cast_both_ways(image_cls: Path, tmp_path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(
        convert_float_to_float16(onnx.load(str(image_cls / "model.onnx")), keep_io_types=False),
        str(tmp_path / "native.onnx"),
    )
    variant = Variant(file="native.onnx", format="onnx", precision="fp16", usable=True)
    rt = OrtRuntime(tmp_path / "native.onnx", variant, device="cpu", threads=1, spinning=True)
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    out = rt.run({"pixels": x})["logits"]
    want = _open(image_cls).run({"pixels": x})["logits"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=5e-3 * np.abs(want).max())


def test_native_fp16_torchscript_inputs_are_detected(image_cls: Path, tmp_path: Path) -> None:
    vdir = tmp_path / "v"
    vdir.mkdir()
    spec = _spec(image_cls)
    torch.manual_seed(0)
    model = PixelNet(1, 3).eval()
    write_torchscript(model.half(), (torch.rand(2, 1, 8, 8, dtype=torch.float16),), vdir / "model.fp16.pt")
    variant = Variant(file="model.fp16.pt", format="torchscript", precision="fp16", usable=True)
    spec.model_copy(update={"variants": [variant]}).write(vdir)
    rt = open_runtime(vdir, variant)
    x = np.random.default_rng(2).random((2, 1, 8, 8), dtype=np.float32)
    out = rt.run({"pixels": x})["logits"]
    assert out.dtype == np.float32 and out.shape == (2, 3)
    with torch.no_grad():
        want = model.float()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, want, atol=1e-2)


def test_torch_threads_are_set_only_when_given(text_cls: Path) -> None:
    before = torch.get_num_threads()
    try:
        rt = open_runtime(text_cls, select_variant(_spec(text_cls), runtime="pt2"), threads=1)
        assert torch.get_num_threads() == 1
        assert "torch_threads=1" in rt.describe()
    finally:
        torch.set_num_threads(before)


def test_corrupt_or_missing_files_raise_model_load_error(image_cls: Path, tmp_path: Path) -> None:
    spec = _spec(image_cls)
    spec.write(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    (tmp_path / "model.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime cannot load .*model\.onnx"):
        open_runtime(tmp_path, select_variant(spec))
    with pytest.raises(ModelLoadError, match=r"cannot load .*model\.pt2 as pt2"):
        open_runtime(tmp_path, select_variant(spec, runtime="pt2"))
    with pytest.raises(ModelLoadError, match=r"model\.pt is missing"):
        open_runtime(tmp_path, select_variant(spec, runtime="torchscript"))


def test_cuda_requested_without_a_gpu_is_a_clear_error(image_cls: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        open_runtime(image_cls, select_variant(_spec(image_cls), runtime="pt2"), device="cuda")
