"""IOBinding on CPU: ORT accepts a 'cpu' binding, so the binding path is proven equal to session.run here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deepserve.handlers import io_binding
from deepserve.handlers.io_binding import DeviceBinding, binding_device, default_staging, plan_inputs
from deepserve.handlers.ort_runtime import OrtRuntime
from deepserve.handlers.pinned import PinnedStaging, grown_size, torch_pinned_allocator
from deepserve.store import Variant


def write_mlp(path: Path, *, hidden: int = 16, dtype: type[np.generic] = np.float32) -> Path:
    """x[N,8] -> relu(x@w1) -> @w2 -> y[N,4]; plus a second output so output order is checked."""
    rng = np.random.default_rng(0)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    w1 = numpy_helper.from_array(rng.standard_normal((8, hidden)).astype(dtype), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(dtype), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", elem, ["N", 8])],
        [helper.make_tensor_value_info("y", elem, ["N", 4]),
         helper.make_tensor_value_info("hidden", elem, ["N", hidden])],
        initializer=[w1, w2],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def fp_variant(precision: str) -> Variant:
    return Variant(format="onnx", precision=precision, file="mlp.onnx", usable=True)  # type: ignore[arg-type]


def test_only_gpu_providers_bind() -> None:
    assert binding_device("CUDAExecutionProvider") == "cuda"
    assert binding_device("TensorrtExecutionProvider") == "cuda"
    assert binding_device("CPUExecutionProvider") is None


def test_plan_names_dtypes_shapes_and_device() -> None:
    feeds = {"ids": np.zeros((2, 5), np.int64), "x": np.ones((3, 8), np.float16)}
    plan = plan_inputs(feeds, "cuda", 1)
    assert [(b.name, b.dtype, b.shape, b.device_type, b.device_id) for b in plan] == [
        ("ids", np.dtype(np.int64), (2, 5), "cuda", 1),
        ("x", np.dtype(np.float16), (3, 8), "cuda", 1),
    ]


@pytest.mark.parametrize("batch", [1, 7])
def test_cpu_binding_round_trips_equal_to_session_run(tmp_path: Path, batch: int) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    plain = OrtRuntime(path, fp_variant("fp32"), device="cpu", threads=1, spinning=False)
    bound = OrtRuntime(path, fp_variant("fp32"), device="cpu", threads=1, spinning=False, bind_on="cpu")
    assert plain.binding is None and bound.binding is not None and "io_binding=cpu" in bound.describe()
    x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
    want, got = plain.run({"x": x}), bound.run({"x": x})
    assert list(got) == ["y", "hidden"] == list(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def test_fp16_graph_binds_cast_inputs_and_serves_fp32(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx", dtype=np.float16)
    bound = OrtRuntime(path, fp_variant("fp16"), device="cpu", threads=1, spinning=False, bind_on="cpu")
    plain = OrtRuntime(path, fp_variant("fp16"), device="cpu", threads=1, spinning=False)
    x = np.linspace(-1, 1, 16, dtype=np.float64).reshape(2, 8)  # float64 in: the runtime casts to fp16
    got, want = bound.run({"x": x}), plain.run({"x": x})
    assert got["y"].dtype == np.float32
    np.testing.assert_array_equal(got["y"], want["y"])


def test_binding_does_not_keep_the_previous_shape(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    rt = OrtRuntime(path, fp_variant("fp32"), device="cpu", threads=1, spinning=False)
    binding = DeviceBinding(rt.session, rt.output_names, device_type="cpu", device_id=0)
    for batch in (4, 1, 9):
        y, hidden = binding.run({"x": np.ones((batch, 8), np.float32)})
        assert y.shape == (batch, 4) and hidden.shape == (batch, 16)


@pytest.mark.gpu
def test_cuda_binding_round_trips_equal_to_the_cpu(tmp_path: Path) -> None:
    """On a GPU (bench/gpu_check.sh runs `-m gpu`): a CUDA session binds on the device by itself."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with the CUDA provider")
    path = write_mlp(tmp_path / "mlp.onnx")
    cpu = OrtRuntime(path, fp_variant("fp32"), device="cpu", threads=1, spinning=False)
    gpu = OrtRuntime(path, fp_variant("fp32"), device="cuda:0", threads=1, spinning=False)
    assert gpu.binding is not None and gpu.binding.device_type == "cuda" and gpu.binding.device_id == 0
    x = np.random.default_rng(5).standard_normal((6, 8)).astype(np.float32)
    want, got = cpu.run({"x": x}), gpu.run({"x": x})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


class RecordingAllocator:
    """Stands in for pinned memory: plain uint8 buffers, each one kept so a test can look inside."""

    def __init__(self) -> None:
        self.buffers: list[np.ndarray] = []

    def __call__(self, nbytes: int) -> np.ndarray:
        self.buffers.append(np.full(nbytes, 0xAB, np.uint8))  # garbage, so a short copy would show
        return self.buffers[-1]


def test_buffers_grow_to_powers_of_two() -> None:
    assert [grown_size(n) for n in (0, 1, 2, 3, 128, 129, 19_267_584)] == [1, 1, 2, 4, 128, 256, 33_554_432]


def test_staging_reuses_a_buffer_until_a_feed_outgrows_it() -> None:
    allocate = RecordingAllocator()
    staging = PinnedStaging(allocate)
    sizes = []
    for batch in (4, 1, 4, 9, 2, 9):
        x = np.arange(batch * 8, dtype=np.float32).reshape(batch, 8)
        staged = staging.stage("x", x)
        assert staged.shape == x.shape and staged.dtype == x.dtype and staged.flags.c_contiguous
        np.testing.assert_array_equal(staged, x)
        assert np.shares_memory(staged, allocate.buffers[-1])  # the copy lands in the held buffer
        sizes.append(staging.capacity("x"))
    assert sizes == [128, 128, 128, 512, 512, 512] and staging.allocations == 2
    assert [b.nbytes for b in allocate.buffers] == [128, 512]


def test_each_input_has_its_own_buffer_and_odd_feeds_pass() -> None:
    allocate = RecordingAllocator()
    staging = PinnedStaging(allocate)
    ids, mask = np.arange(10, dtype=np.int64).reshape(2, 5), np.ones((2, 5), np.bool_)
    staged_ids, staged_mask = staging.stage("ids", ids), staging.stage("mask", mask)
    assert not np.shares_memory(staged_ids, staged_mask) and staging.allocations == 2
    np.testing.assert_array_equal(staged_ids, ids)
    np.testing.assert_array_equal(staged_mask, mask)
    strided = np.arange(32, dtype=np.float16).reshape(4, 8)[:, ::2]  # not contiguous: copied as values
    np.testing.assert_array_equal(staging.stage("h", strided), strided)
    assert staging.stage("scalar", np.array(3.5, np.float32)).shape == ()
    assert staging.stage("empty", np.zeros((0, 8), np.float32)).shape == (0, 8)
    text = np.array(["a", "bc"])
    assert staging.stage("text", text) is text  # never on a GPU: left as it is


def test_an_allocator_giving_the_wrong_buffer_is_refused() -> None:
    staging = PinnedStaging(lambda n: np.zeros(n // 2, np.uint8))
    with pytest.raises(ValueError, match=r"pinned allocator gave uint8\[8\], not uint8\[>=16\]"):
        staging.stage("x", np.zeros(4, np.float32))


def test_no_staging_off_cuda_or_without_torch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_staging("cpu", 0) is None
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_pinned_allocator(0) is None and default_staging("cuda", 0) is None
    asked: list[int] = []
    monkeypatch.setattr(
        io_binding,
        "torch_pinned_allocator",
        lambda device_id: asked.append(device_id) or RecordingAllocator(),
    )
    staged = default_staging("cuda", 1)
    assert staged is not None and staged.allocations == 0 and asked == [1]  # pinned on the model's GPU


def test_binding_through_staged_buffers_equals_session_run(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    rt = OrtRuntime(path, fp_variant("fp32"), device="cpu", threads=1, spinning=False)
    allocate = RecordingAllocator()
    binding = DeviceBinding(rt.session, rt.output_names, device_type="cpu", device_id=0,
                            staging=PinnedStaging(allocate))  # fmt: skip
    rng = np.random.default_rng(3)
    for batch in (4, 1, 9, 4):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        want = rt.session.run(rt.output_names, {"x": x})
        got = binding.run({"x": x})
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(allocate.buffers[-1][: x.nbytes].view(np.float32).reshape(x.shape), x)
    assert binding.staging is not None and binding.staging.allocations == 2  # 4 rows, then 9 rows


@pytest.mark.gpu
def test_cuda_inputs_are_staged_through_reused_pinned_memory(tmp_path: Path) -> None:
    """On a GPU (bench/gpu_check.sh): a CUDA binding stages through torch's pinned memory, reused."""
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
        pytest.skip("needs onnxruntime-gpu with the CUDA provider and torch with CUDA")
    path = write_mlp(tmp_path / "mlp.onnx")
    cpu = OrtRuntime(path, fp_variant("fp32"), device="cpu", threads=1, spinning=False)
    gpu = OrtRuntime(path, fp_variant("fp32"), device="cuda:0", threads=1, spinning=False)
    assert gpu.binding is not None and gpu.binding.staging is not None
    rng = np.random.default_rng(11)
    for batch in (32, 8, 32):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        want, got = cpu.run({"x": x}), gpu.run({"x": x})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
    assert gpu.binding.staging.allocations == 1  # batch 32 pinned once, then reused
    staged = gpu.binding.staging.stage("probe", np.ones((64, 8), np.float32))
    assert torch.from_numpy(staged).is_pinned()
