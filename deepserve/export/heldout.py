"""Held-out inputs for parity, in the units a client sends (raw pixels in [0, 1], raw features, bytes).

When the checkpoint's ``meta["data_source"]`` names one of training's built-in datasets, the
inputs are that dataset's test split (same split seed as training), so parity is measured on
data the model never saw. Otherwise (a user's CSV, a random-init test model) they are drawn
from the statistics in ``meta`` and parity.json says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Rows = dict[str, np.ndarray]


def _digits() -> Rows:
    from deepserve.training.data import digits

    test = digits(normalise=False).test.tensors[0]  # (N, 1, 8, 8) raw pixels in [0, 1]
    return {"pixels": test.numpy().astype(np.float32)}


def _sklearn_table(loader: str) -> Rows:
    import sklearn.datasets as datasets

    from deepserve.training.data import split_indices

    x = getattr(datasets, loader)(**({"scaled": False} if loader == "load_diabetes" else {})).data
    test = split_indices(len(x))[2].numpy()
    return {"features": np.asarray(x, dtype=np.float32)[test]}


def _topics(meta: dict[str, Any]) -> Rows:
    from deepserve.training.textdata import subword_snippets, topic_snippets

    prep, topics = meta["preprocessing"], tuple(meta["labels"])
    length = int(prep["max_length"])
    if prep.get("tokenizer", "bytes") == "bytes":
        ids, mask = topic_snippets(length=length, topics=topics).test.tensors[:2]
    else:  # the same test snippets (subword_snippets, its default length) through its own tokenizer.json
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(meta["assets"][prep.get("tokenizer_file") or "tokenizer.json"])
        ids, mask = subword_snippets(tokenizer, length, topics=topics).test.tensors[:2]
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def _lm_text(meta: dict[str, Any]) -> Rows:
    from deepserve.training.textdata import lm_data, topic_corpus

    prep = meta["preprocessing"]
    context = int(prep["max_length"])
    if prep.get("tokenizer", "bytes") == "bytes":
        ids = lm_data(topic_corpus(), context).val.tensors[0]  # last 10% of the corpus, never trained on
        return {"input_ids": ids.numpy()}
    import torch
    from tokenizers import Tokenizer

    from deepserve.training.data import windows

    tokenizer = Tokenizer.from_str(meta["assets"][prep.get("tokenizer_file") or "tokenizer.json"])
    data = topic_corpus()  # the same last 10 %, through the checkpoint's own BPE tokenizer
    val = data[int(len(data) * 0.9) :].decode("utf-8", errors="ignore")
    val_ids = torch.tensor(tokenizer.encode(val).ids, dtype=torch.long)
    return {"input_ids": windows(val_ids, context + 1, context)[:, :-1].numpy()}


def _builtin(meta: dict[str, Any]) -> tuple[Rows, str] | None:
    source = str(meta.get("data_source", ""))
    task = meta.get("task")
    if source.startswith("sklearn digits"):  # all digits, or some classes of them (transfer recipes)
        return _digits(), "sklearn digits, test split"
    if source == "sklearn breast_cancer":
        return _sklearn_table("load_breast_cancer"), "sklearn breast_cancer, test split"
    if source == "sklearn diabetes":
        return _sklearn_table("load_diabetes"), "sklearn diabetes, test split"
    if source.startswith("pydoc_data.topics") and task == "classification":
        return _topics(meta), "pydoc_data.topics snippets, test split"
    if source.startswith("pydoc_data.topics") and task == "text-generation":
        return _lm_text(meta), "pydoc_data.topics, held-out last 10% (validation windows)"
    return None


def _synthetic(meta: dict[str, Any], rows: int) -> Rows:
    gen = np.random.default_rng(0)
    prep = meta.get("preprocessing") or {}
    kind = prep.get("kind")
    if kind == "image":
        shape = (rows, prep["channels"], prep["height"], prep["width"])
        return {"pixels": gen.random(shape, dtype=np.float32)}
    if kind == "tabular":
        mean, std = np.array(prep["mean"], np.float32), np.array(prep["std"], np.float32)
        features = (mean + std * gen.standard_normal((rows, len(mean)))).astype(np.float32)
        for name, values in (prep.get("categories") or {}).items():  # one-hot columns take indexes
            features[:, prep["features"].index(name)] = gen.integers(0, len(values), rows)
        return {"features": features}
    if kind == "text":
        length, vocab = min(int(prep.get("max_length", 32)), 48), int(prep.get("vocab_size", 256))
        low, high = (32, 127) if vocab >= 127 else (1, vocab)  # printable ASCII bytes where the vocab allows
        ids = gen.integers(low, high, (rows, length)).astype(np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    raise ValueError(f"no held-out inputs for preprocessing kind {kind!r}")


def held_out(meta: dict[str, Any], rows: int = 64) -> tuple[Rows, str]:
    """Up to ``rows`` held-out input rows and a one-line description of where they came from."""
    found = _builtin(meta)
    data, what = (
        found if found is not None else (_synthetic(meta, rows), "synthetic, drawn from meta statistics")
    )
    gen = torch.Generator().manual_seed(0)
    n = len(next(iter(data.values())))
    pick = torch.randperm(n, generator=gen)[: min(rows, n)].numpy()
    return {k: v[pick] for k, v in data.items()}, what
