"""Every zoo model exports to ONNX, TorchScript and torch.export with dynamic batch and passes parity."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from deepserve.export.exporter import export_checkpoint
from deepserve.export.pt2 import cpu_has_bf16
from deepserve.models import list_models
from deepserve.store import ModelSpec
from tests.export.cases import CASES, write_checkpoint

EXPECTED = {"model.onnx", "model.fp16.onnx", "model.pt", "model.pt2", "model.json", "parity.json"}
INT8 = {"transformer", "gpt", "bert"}
# The slow lower-precision torch files (fp16 TorchScript, bf16 torch.export) for one model per family;
# the others skip them, as the quick store does, to keep this sweep inside its time budget.
ALL_VARIANTS = {"resnet", "transformer", "gpt"}


def test_every_zoo_model_has_an_export_case() -> None:
    assert set(list_models()) <= {c.model for c in CASES}


def _batch_axis(spec: ModelSpec) -> list[int]:
    """Per input, where the batch dim is (the KV cache is (L, B, H, P, Dh))."""
    return [1 if t.name in ("past_key", "past_value") else 0 for t in spec.inputs]  # per-layer pasts: 0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_export_passes_parity_at_two_batch_sizes(case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = write_checkpoint(case, tmp_path / "ckpt.pt")
    full = case.id in ALL_VARIANTS
    written = export_checkpoint(ckpt, tmp_path / "store", name=case.id, skip_slow=not full)
    expected_dirs = [case.id, f"{case.id}-decoder"] if case.model in ("vae", "autoencoder") else [case.id]
    assert [p.parent.name for p in written] == expected_dirs
    for version_dir in written:
        files = {p.name for p in version_dir.iterdir()}
        want = EXPECTED | ({"model.fp16.pt"} if full else set())
        want |= {"model.bf16.pt2"} if full and cpu_has_bf16() else set()
        want |= {"model.int8.onnx"} if case.model in INT8 else set()
        assert files == want
        spec = ModelSpec.read(version_dir)
        assert {v.file for v in spec.variants} == want - {"model.json", "parity.json"}
        for t, axis in zip(spec.inputs, _batch_axis(spec), strict=True):
            assert t.shape[axis] == -1, f"{t.name} has a fixed batch dim"
        graph = onnx.load(str(version_dir / "model.onnx")).graph
        assert [i.name for i in graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in graph.output] == [t.name for t in spec.outputs]
        for i, axis in zip(graph.input, _batch_axis(spec), strict=True):
            assert i.type.tensor_type.shape.dim[axis].dim_param, f"ONNX input {i.name} has a static batch dim"
        parity = json.loads((version_dir / "parity.json").read_text())
        for variant in parity["variants"]:
            assert len({c["batch_size"] for c in variant["checks"]}) == 2, variant["file"]
            if variant["precision"] == "fp32":
                assert variant["passed"], variant["reason"]
                assert max(c["rel"] for c in variant["checks"]) <= 1e-4
