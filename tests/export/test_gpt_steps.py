"""The GPT's explicit-KV-cache graph, run step by step in ONNX Runtime, reproduces eager greedy decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepserve.export.exporter import export_checkpoint, read_checkpoint
from deepserve.export.greedy import greedy_eager, greedy_steps
from deepserve.export.onnx_graph import ort_session
from deepserve.export.parity import ort_runner, torch_runner
from deepserve.export.pt2 import load_pt2
from deepserve.handlers.kv_contract import IN_PLACE, host_step, past_names
from deepserve.store import ModelSpec
from tests.export.cases import case, write_checkpoint


@pytest.fixture(scope="module")
def gpt_version(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("gpt")
    ckpt = write_checkpoint(case("gpt"), tmp / "gpt.pt", seed=3)
    (version_dir,) = export_checkpoint(ckpt, tmp / "store", name="gpt", skip_slow=True)
    return ckpt, version_dir


def _prompts() -> list[list[int]]:
    text = [b"The for statement iterates over", b"def f(x):", b"A"]
    return [list(t) for t in text]


def test_export_recorded_an_identical_greedy_run(gpt_version: tuple[Path, Path]) -> None:
    parity = json.loads((gpt_version[1] / "parity.json").read_text())
    onnx_fp32 = next(v for v in parity["variants"] if v["file"] == "model.onnx")
    assert onnx_fp32["greedy_generation"]["identical"] is True
    assert onnx_fp32["greedy_generation"]["new_tokens"] > 0


@pytest.mark.parametrize("file", ["model.onnx", "model.pt2"])
def test_step_graph_reproduces_eager_greedy_token_for_token(
    gpt_version: tuple[Path, Path], file: str
) -> None:
    ckpt, version_dir = gpt_version
    spec = ModelSpec.read(version_dir)
    g = spec.generation
    assert g is not None and g.n_layer and g.n_head and g.head_dim and g.context_length == 64
    if file.endswith(".onnx"):
        step = ort_runner(ort_session(version_dir / file))
    else:
        step = torch_runner(
            load_pt2(version_dir / file), [t.name for t in spec.inputs], [t.name for t in spec.outputs]
        )
    model = read_checkpoint(ckpt).build()
    prompts = _prompts()  # different lengths in one batch (left padding + mask)
    got = greedy_steps(step, prompts, 30, (g.n_layer, g.n_head, g.head_dim), contract=IN_PLACE)
    want = greedy_eager(model, prompts, 30)
    assert got == want
    assert len({tuple(t) for t in want}) > 1 or len(set(want[0])) > 1  # not a degenerate constant run


def test_decode_logits_match_full_recompute(gpt_version: tuple[Path, Path]) -> None:
    ckpt, version_dir = gpt_version
    g = ModelSpec.read(version_dir).generation
    assert g is not None and g.n_layer and g.n_head and g.head_dim
    session = ort_runner(ort_session(version_dir / "model.onnx"))
    ids = np.array([list(b"hello world, ")], dtype=np.int64)
    n = ids.shape[1] - 1
    empty = np.zeros((g.n_layer, 1, g.n_head, 0, g.head_dim), np.float32)
    _, key, value = host_step(
        session, IN_PLACE, ids[:, :-1], np.arange(n)[None], np.ones_like(ids[:, :-1]), empty, empty
    )
    step = session(
        {
            "input_ids": ids[:, -1:],
            "position_ids": np.array([[n]]),
            "attention_mask": np.ones_like(ids),
            **dict(zip(past_names(g.n_layer), [*key, *value], strict=True)),
        }
    )
    with torch.no_grad():
        full = read_checkpoint(ckpt).build()(torch.from_numpy(ids))[:, -1].numpy()
    np.testing.assert_allclose(step["logits"][:, -1], full, rtol=1e-4, atol=1e-4)
    assert step["new_key"].shape == (g.n_layer, 1, g.n_head, 1, g.head_dim)  # the new column, not the cache
    assert "present_key" not in step
