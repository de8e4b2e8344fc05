"""A MiniLM-based docs-classifier (a tiny BERT stands in) exports with parity and serves text through the
classification handler, its WordPiece tokenizer.json beside the graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepserve.export.exporter import export_checkpoint
from deepserve.handlers import load_handler
from deepserve.handlers.base import PayloadRequest
from deepserve.store import ModelSpec
from deepserve.training import recipes
from deepserve.training.checkpoint import load_checkpoint
from tests.training.tiny_bert import tiny_bert, use_tiny_bert

TEXTS = [
    "The for statement is used to iterate over the elements of a sequence.",
    "object.__getitem__(self, key) is called to implement evaluation of self[key].",
    "The debugger's prompt is (Pdb).",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("transfer")
    with pytest.MonkeyPatch.context() as mp:
        use_tiny_bert(mp, tiny_bert(tmp / "bert"))
        ckpt = recipes.run_recipe("docs-classifier", tmp / "run", quick=True)
    (version,) = export_checkpoint(ckpt, tmp / "store", skip_slow=True)
    return ckpt, version


def test_version_holds_the_tokenizer_and_passes_parity(exported: tuple[Path, Path]) -> None:
    _, version = exported
    files = {p.name for p in version.iterdir()}
    assert {
        "tokenizer.json",
        "model.onnx",
        "model.fp16.onnx",
        "model.int8.onnx",
        "model.pt",
        "model.pt2",
    } <= files
    spec = ModelSpec.read(version)
    assert spec.architecture == "bert" and spec.preprocessing is not None
    assert (
        spec.preprocessing.tokenizer == "tokenizers" and spec.preprocessing.tokenizer_file == "tokenizer.json"
    )
    parity = json.loads((version / "parity.json").read_text())
    assert "pydoc_data.topics snippets, test split" in parity["inputs"]  # held out, tokenised as served
    for variant in parity["variants"]:
        if variant["precision"] == "fp32":
            assert variant["passed"], variant["file"]


@pytest.mark.parametrize("runtime", ["onnx", "torchscript", "pt2"])
def test_served_text_gets_the_eager_models_probabilities(exported: tuple[Path, Path], runtime: str) -> None:
    from tokenizers import Tokenizer

    ckpt_path, version = exported
    handler = load_handler(version, runtime=runtime, precision="fp32", threads=1)
    [out] = handler.predict_batch([handler.preprocess(PayloadRequest(TEXTS))])
    ckpt = load_checkpoint(ckpt_path)
    tokenizer = Tokenizer.from_str(ckpt.meta["assets"]["tokenizer.json"])
    rows = [e.ids for e in tokenizer.encode_batch(TEXTS)]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    with torch.no_grad():
        want = torch.softmax(ckpt.build()(ids, (ids > 0).long()), -1).numpy()
    np.testing.assert_allclose(out["probabilities"], want, rtol=1e-4, atol=1e-5)
    answer = handler.postprocess(out, PayloadRequest(TEXTS))
    assert len(answer) == len(TEXTS) and set(answer[0]) <= set(ckpt.meta["labels"])
