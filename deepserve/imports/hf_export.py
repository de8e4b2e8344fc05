"""A Hugging Face model to ONNX at import, with the exporter's parity checks against transformers.

Encoders (classification logits, pooled embeddings): ``model.onnx`` + ``model.fp16.onnx``, each
measured against the eager transformers module on sample texts tokenised with the written
tokenizer.json (the path the server takes), in a batch of 3 and one of all 8, padded.

Causal LMs: the step graph of handlers/generation.py (stacked KV cache in and out), measured on a
prefill (B=1, empty cache) and a decode step over left-padded rows, plus greedy generation through
the graph against transformers' full forward (``export/greedy.py``); fp32 only.

A fp32 graph that misses its thresholds fails the import (nothing is written); a fp16 one is kept
but marked unusable, as ``deepserve export`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepserve.export.errors import ExportError
from deepserve.export.greedy import greedy_check
from deepserve.export.onnx_graph import ort_session, write_onnx
from deepserve.export.parity import Arrays, measure, ort_runner, torch_runner
from deepserve.export.precision import write_fp16_onnx
from deepserve.export.variants import VariantResult
from deepserve.handlers.kv_contract import CONCAT
from deepserve.imports.base import SourceError
from deepserve.imports.hf_tokenizer import SAMPLE_TEXTS

ENCODER_INPUTS = ["input_ids", "attention_mask"]
STEP_INPUTS = ["input_ids", "position_ids", "attention_mask", "past_key", "past_value"]
STEP_OUTPUTS = ["logits", "present_key", "present_value"]
MAX_BATCH = 1024


def tokenise(tokenizer: Any, texts: list[str], pad_id: int) -> Arrays:
    from deepserve.handlers.tokenizer import encode_texts

    return encode_texts(tokenizer, texts, pad_id=pad_id)


def _step(file: str, precision: str, write: Callable[[], Any]) -> VariantResult:
    start = time.perf_counter()
    try:
        write()
    except (ExportError, RuntimeError, ValueError, TypeError) as exc:  # torch.export raises many kinds
        raise SourceError(
            f"exporting {file} failed: {_line(exc)}; import with --runtime torch instead"
        ) from exc
    return VariantResult(file, "onnx", precision, seconds=time.perf_counter() - start)  # type: ignore[arg-type]


def export_encoder(
    module: nn.Module,
    tmp: Path,
    *,
    output: str,
    classifier: bool,
    tokenizer: Any,
    pad_id: int,
    max_length: int,
) -> list[VariantResult]:
    """model.onnx (+ fp16) for ``(input_ids, attention_mask) -> output``, with parity measured."""
    batches = [tokenise(tokenizer, SAMPLE_TEXTS[:3], pad_id), tokenise(tokenizer, SAMPLE_TEXTS, pad_id)]
    reference = torch_runner(module, ENCODER_INPUTS, [output])
    width = max(2, min(16, max_length))
    example = (
        torch.from_numpy(np.resize(batches[1]["input_ids"], (2, width))),
        torch.ones(2, width, dtype=torch.int64),
    )
    batch, seq = torch.export.Dim("batch", max=MAX_BATCH), torch.export.Dim("sequence", max=max_length)
    dims = {name: {0: batch, 1: seq} for name in ENCODER_INPUTS}
    fp32, fp16 = tmp / "model.onnx", tmp / "model.fp16.onnx"
    results = [
        _step(
            fp32.name,
            "fp32",
            lambda: write_onnx(
                module, example, fp32, input_names=ENCODER_INPUTS, output_names=[output], dynamic_shapes=dims
            ),
        ),
        _step(fp16.name, "fp16", lambda: write_fp16_onnx(fp32, fp16)),
    ]
    classes = {output} if classifier else set()
    for result in results:
        session = ort_session(tmp / result.file, fp16=result.precision == "fp16")
        result.checks = measure(ort_runner(session), reference, batches, classifier_outputs=classes)
    return results


def export_causal_step(
    step: nn.Module, tmp: Path, *, tokenizer: Any, context: int, geometry: tuple[int, int, int], vocab: int
) -> list[VariantResult]:
    """model.onnx for the cached step (names and dims of the zoo GPT's graph), with parity and greedy."""
    L, H, Dh = geometry
    example = (
        torch.randint(1, vocab, (2, 3)), torch.arange(3).repeat(2, 1), torch.ones(2, 5, dtype=torch.int64),
        torch.randn(L, 2, H, 2, Dh), torch.randn(L, 2, H, 2, Dh),
    )  # fmt: skip
    path = tmp / "model.onnx"
    result = _step(path.name, "fp32", lambda: write_onnx(step, example, path, input_names=STEP_INPUTS,
                                                         output_names=STEP_OUTPUTS,
                                                         dynamic_shapes=_step_dims(context)))  # fmt: skip
    runner = ort_runner(ort_session(path))
    rows = _token_rows(tokenizer, context)
    eager = torch_runner(step, STEP_INPUTS, STEP_OUTPUTS)
    result.checks = measure(runner, eager, _step_batches(step, rows, geometry), classifier_outputs={"logits"})
    prompts = [rows[0][: max(2, context // 4)], rows[1][: max(2, context // 6)]]
    new_tokens = min(16, context - len(prompts[0]))
    result.extra |= greedy_check(runner, _FullForward(step), prompts, new_tokens, geometry,  # type: ignore[arg-type]
                                 contract=CONCAT)
    return [result]


class _FullForward:
    """transformers' plain forward (no cache): logits (B, T, V) for the greedy reference."""

    def __init__(self, step: nn.Module) -> None:
        self.lm: Any = step.lm

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids).logits  # type: ignore[no-any-return]


def _step_dims(context: int) -> dict[str, dict[int, Any]]:
    dim = torch.export.Dim
    b, t, p = (
        dim("batch", max=MAX_BATCH),
        dim("sequence", min=1, max=context),
        dim("past", min=0, max=context),
    )
    s = dim("total", min=1, max=2 * context)  # = past + sequence; torch.export infers the relation
    return {"input_ids": {0: b, 1: t}, "position_ids": {0: b, 1: t}, "attention_mask": {0: b, 1: s},
            "past_key": {1: b, 3: p}, "past_value": {1: b, 3: p}}  # fmt: skip


def _token_rows(tokenizer: Any, context: int) -> list[list[int]]:
    """Four rows of real token ids (the sample texts, joined and cut), each at most ``context`` // 2."""
    stream = [t for text in SAMPLE_TEXTS for t in tokenizer.encode(text + " ")]
    width = max(4, min(24, context // 2))
    stream = (stream * (1 + 4 * width // max(1, len(stream))))[: 4 * width]
    return [stream[i * width : (i + 1) * width] for i in range(4)]


def _step_batches(step: nn.Module, rows: list[list[int]], geometry: tuple[int, int, int]) -> list[Arrays]:
    """A prefill (B=1, P=0) and a one-token decode step over 3 left-padded rows (P>0)."""
    L, H, Dh = geometry
    ids = np.array(rows, np.int64)  # (4, T)
    T = ids.shape[1] - 1
    empty = np.zeros((L, 1, H, 0, Dh), np.float32)
    prefill = {"input_ids": ids[:1, :T], "position_ids": np.arange(T, dtype=np.int64)[None],
               "attention_mask": np.ones((1, T), np.int64), "past_key": empty,
               "past_value": empty}  # fmt: skip
    prompt, mask = ids[1:4, :T].copy(), np.ones((3, T), np.int64)
    for i in range(3):  # rows 1 and 2 are shorter prompts, left-padded
        prompt[i, : i * T // 4], mask[i, : i * T // 4] = 0, 0
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    past = np.zeros((L, 3, H, 0, Dh), np.float32)
    with torch.no_grad():
        _, key, value = step(*(torch.from_numpy(a) for a in (prompt, positions, mask, past, past)))
    step_mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    decode = {"input_ids": ids[1:4, T : T + 1], "position_ids": step_mask.sum(1, keepdims=True) - 1,
              "attention_mask": step_mask, "past_key": key.numpy(), "past_value": value.numpy()}  # fmt: skip
    return [prefill, decode]


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
