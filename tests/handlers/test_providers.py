"""Provider selection for ONNX Runtime (TensorRT, CUDA, CPU), the TensorRT plan, and the provider
each served model reports. All on the CPU: the GPU parts are pure functions of the provider list,
model.json and the model file; a CUDA-less onnxruntime shows the fallback for real."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from deepserve.handlers import ort_runtime, trt_plan
from deepserve.handlers.ort_runtime import OrtRuntime, cuda_options, providers_for
from deepserve.handlers.runtime import open_runtime, runtime_provider, select_variant
from deepserve.handlers.trt_plan import TensorrtPlan, plan_tensorrt, profile_shapes
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.store import BatchingSpec, GenerationDefaults, ModelSpec, TensorSpec

GPU_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
H100 = "NVIDIA-H100-80GB-HBM3-sm90"


def _plan(tmp_path: Path, profile: trt_plan.ProfileShapes | None = None) -> TensorrtPlan:
    return TensorrtPlan(fp16=True, cache_dir=tmp_path / "engines", profile=profile)


def test_tensorrt_gets_fp16_caches_and_the_profile(tmp_path: Path) -> None:
    profile = trt_plan.ProfileShapes("x:1x3", "x:8x3", "x:32x3")
    chain = providers_for("cuda:1", GPU_BOX, _plan(tmp_path, profile))
    assert [p if isinstance(p, str) else p[0] for p in chain] == GPU_BOX
    trt = chain[0][1]
    assert trt["device_id"] == 1 and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_enable"] is True and trt["trt_timing_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "engines")
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "x:1x3", "x:8x3", "x:32x3",
    )  # fmt: skip
    assert chain[1] == ("CUDAExecutionProvider", cuda_options(1))
    assert cuda_options(1)["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda_options(1)["do_copy_in_default_stream"] is True


def test_no_profile_means_no_profile_options(tmp_path: Path) -> None:
    trt = providers_for("cuda", GPU_BOX, _plan(tmp_path))[0][1]
    assert trt["device_id"] == 0 and not any(k.startswith("trt_profile") for k in trt)


def test_cuda_without_tensorrt_and_the_cpu_fallback(tmp_path: Path) -> None:
    cuda_only = providers_for("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], _plan(tmp_path))
    assert cuda_only == [("CUDAExecutionProvider", cuda_options(0)), "CPUExecutionProvider"]
    assert providers_for("cuda", ["CPUExecutionProvider"], _plan(tmp_path)) == ["CPUExecutionProvider"]
    assert providers_for("cpu", GPU_BOX, _plan(tmp_path)) == ["CPUExecutionProvider"]


def test_image_profile_spans_the_batch_axis_only(image_cls: Path) -> None:
    spec = ModelSpec.read(image_cls)  # pixels [-1, 1, 8, 8], max_batch_size 16
    assert profile_shapes(spec, 16) == trt_plan.ProfileShapes("pixels:1x1x8x8", "pixels:16x1x8x8",
                                                              "pixels:16x1x8x8")  # fmt: skip
    preferring = spec.model_copy(update={"batching": BatchingSpec(preferred_batch_sizes=[4, 8, 64])})
    assert profile_shapes(preferring, 32).opt_shapes == "pixels:8x1x8x8"  # type: ignore[union-attr]


def test_text_profile_takes_the_sequence_axis_from_max_length(text_cls: Path) -> None:
    spec = ModelSpec.read(text_cls)  # input_ids, attention_mask [-1, -1]; max_length 32
    shapes = profile_shapes(spec, 8)
    assert shapes is not None
    assert shapes.min_shapes == "input_ids:1x1,attention_mask:1x1"
    assert shapes.opt_shapes == shapes.max_shapes == "input_ids:8x32,attention_mask:8x32"


def test_an_axis_without_a_bound_gives_no_profile(image_cls: Path) -> None:
    spec = ModelSpec.read(image_cls)
    kv = TensorSpec(name="past", datatype="FP32", shape=[-1, 2, -1, 4])
    with_kv = spec.model_copy(update={"inputs": [*spec.inputs, kv],
                                      "generation": GenerationDefaults(context_length=64)})  # fmt: skip
    assert profile_shapes(with_kv, 16) is None
    unbatched = spec.model_copy(update={"max_batch_size": 0})
    assert profile_shapes(unbatched, 16) is None  # a -1 first axis that is not a batch: unknown


def test_engine_cache_folder_follows_the_model_file_and_the_gpu(
    image_cls: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec.read(image_cls)
    variant = select_variant(spec, precision="fp16", runtime="onnx")
    model = tmp_path / "model.fp16.onnx"
    model.write_bytes((image_cls / variant.file).read_bytes())
    monkeypatch.setattr(trt_plan, "gpu_identity", lambda device_id: H100)

    def plan() -> TensorrtPlan:
        return plan_tensorrt(model, variant, spec, device_id=0, cache_root=tmp_path / "trt")

    first = plan()
    assert first.fp16 and first.cache_dir.is_dir() and first.cache_dir.parent == tmp_path / "trt"
    assert plan().cache_dir == first.cache_dir  # a restart finds the same engines
    assert "img-cls-v1-fp16-" in first.cache_dir.name and "H100" in first.cache_dir.name
    model.write_bytes(model.read_bytes() + b"\0")  # retrained: same name, other bytes
    retrained = plan()
    assert retrained.cache_dir != first.cache_dir
    monkeypatch.setattr(trt_plan, "gpu_identity", lambda device_id: "NVIDIA-A10G-sm86")
    assert plan().cache_dir not in (first.cache_dir, retrained.cache_dir)


def test_an_unwritable_cache_root_turns_the_cache_off_not_the_model(
    image_cls: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec.read(image_cls)
    variant = select_variant(spec, runtime="onnx")
    monkeypatch.setattr(trt_plan, "gpu_identity", lambda device_id: H100)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the cache root should be: mkdir fails as on a read-only root
    plan = plan_tensorrt(image_cls / variant.file, variant, spec, device_id=0, cache_root=blocker)
    assert plan.cache_dir is None and plan.profile is not None and not plan.fp16
    trt = providers_for("cuda", GPU_BOX, plan)[0][1]
    assert not any("cache" in key for key in trt) and trt["trt_fp16_enable"] is False


def test_without_nvml_the_gpu_key_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as when nvidia-ml-py is absent
    assert trt_plan.gpu_identity(2) == "gpu2-unknown"


def test_a_gpu_provider_ort_cannot_create_falls_back_to_cpu_and_says_so(
    image_cls: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    real_session, real_available = ort.InferenceSession, ort.get_available_providers()

    def falling_back(path: str, opts: object, providers: list[object], **kw: object) -> object:
        """onnxruntime-gpu lists TensorRT even without its libraries; creating it fails and ORT
        retries with the providers left ("EP Error ... Falling back"): here, the CPU alone."""
        kept = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in real_available]
        return real_session(path, opts, providers=kept, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: GPU_BOX)
    monkeypatch.setattr(ort, "InferenceSession", falling_back)
    monkeypatch.setattr(trt_plan, "gpu_identity", lambda device_id: H100)
    monkeypatch.setattr(trt_plan, "default_trt_cache_root", lambda: tmp_path / "trt")
    spec = ModelSpec.read(image_cls)
    variant = select_variant(spec, runtime="onnx")
    with caplog.at_level(logging.WARNING, logger=ort_runtime.__name__):
        rt = OrtRuntime(image_cls / variant.file, variant, device="cuda", threads=1, spinning=False,
                        spec=spec)  # fmt: skip
    assert rt.providers_asked[0][0] == "TensorrtExecutionProvider"
    assert rt.providers_asked[0][1]["trt_profile_max_shapes"] == "pixels:16x1x8x8"
    assert Path(rt.providers_asked[0][1]["trt_engine_cache_path"]).parent == tmp_path / "trt"
    assert rt.provider == "CPUExecutionProvider"
    assert "runs on CPUExecutionProvider, not on TensorrtExecutionProvider" in caplog.text


def test_runtimes_report_their_provider(image_cls: Path) -> None:
    spec = ModelSpec.read(image_cls)
    onnx = open_runtime(image_cls, select_variant(spec, runtime="onnx"), threads=1)
    torch_rt = open_runtime(image_cls, select_variant(spec, runtime="pt2"), threads=1)
    assert (onnx.provider, torch_rt.provider) == ("CPUExecutionProvider", "torch-cpu")
    assert runtime_provider(object()) == "unknown"  # a user handler holding no deepserve runtime


async def test_a_served_model_exports_its_provider_as_a_metric_label(image_cls: Path) -> None:
    settings = Settings(model_store=image_cls.parent.parent, load_models=["img-cls"], device="cpu")
    metrics = Metrics(CollectorRegistry())
    registry = Registry(settings, metrics)
    await registry.load_store()
    try:
        assert registry.get("img-cls").ready
        text = metrics.render().decode()
        labels = 'device="cpu",model="img-cls",provider="CPUExecutionProvider",version="1"'
        assert f"deepserve_model_provider_info{{{labels}}} 1.0" in text
    finally:
        await registry.stop(timeout=1.0)


@pytest.mark.gpu
def test_tensorrt_engine_cache_is_hit_on_the_second_start(image_cls: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with the TensorRT provider (and its libraries)")
    spec = ModelSpec.read(image_cls)
    variant = select_variant(spec, device="cuda", runtime="onnx")
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)

    def start() -> tuple[dict[str, np.ndarray], str, float]:
        t0 = time.perf_counter()
        rt = open_runtime(image_cls, variant, device="cuda", threads=1, trt_cache_root=tmp_path)
        out = rt.run({"pixels": x})  # an engine built lazily would be built here
        return out, rt.provider, time.perf_counter() - t0

    first, provider, cold = start()
    assert provider == "TensorrtExecutionProvider"
    engines = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.engine"))
    assert engines, f"no engine written under {tmp_path}"
    second, _, warm = start()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.engine")) == engines
    assert warm < cold, f"second start {warm:.2f} s not faster than the first {cold:.2f} s"
    np.testing.assert_allclose(second["logits"], first["logits"], rtol=1e-3, atol=1e-3)
