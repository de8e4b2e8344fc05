"""A Hugging Face model to ONNX at import, with the exporter's parity checks against transformers.

Encoders (classification logits, pooled embeddings): ``model.onnx`` + ``model.fp16.onnx``, each
measured against the eager transformers module on sample texts tokenised with the written
tokenizer.json (the path the server takes), in a batch of 3 and one of all 8, padded.

Causal LMs: the step graph of handlers/generation.py with the zoo GPT's in-place cache contract
(``handlers/kv_contract.py``: one past per layer in, the new columns out), measured on a prefill
(B=1, empty cache) and a decode step over left-padded rows, plus greedy generation through the
graph against transformers' full forward (``export/greedy.py``); fp32 only. The step attends to
the past and the new columns apart (``hf_attention``), so the graph never copies the cache; a model
that refuses that is exported with transformers' own attention (parity.json ``attention`` says which).

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
from deepserve.export.generative_plans import gpt_io
from deepserve.export.greedy import greedy_check
from deepserve.export.onnx_graph import ort_session, write_onnx
from deepserve.export.parity import Arrays, Runner, measure, ort_runner, torch_runner
from deepserve.export.precision import write_fp16_onnx
from deepserve.export.variants import VariantResult
from deepserve.handlers.kv_contract import IN_PLACE, TOKEN_INPUTS, past_names
from deepserve.imports.base import SourceError
from deepserve.imports.hf_modules import cache_geometry
from deepserve.imports.hf_tokenizer import SAMPLE_TEXTS
from deepserve.store import TensorSpec

ENCODER_INPUTS = ["input_ids", "attention_mask"]
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


def step_names(n_layer: int) -> tuple[list[str], list[str]]:
    """The step graph's input and output names: the in-place contract's (handlers/kv_contract.py)."""
    return [*TOKEN_INPUTS, *past_names(n_layer)], ["logits", "new_key", "new_value"]


def step_signature(config: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """model.json's inputs and outputs of the step, declared as the zoo GPT's; the cache heads are the
    key/value heads (fewer than the query heads in a grouped-query model)."""
    return gpt_io(*cache_geometry(config), int(config.vocab_size))


def export_causal_step(
    step: Any, tmp: Path, *, tokenizer: Any, context: int, geometry: tuple[int, int, int], vocab: int
) -> list[VariantResult]:
    """model.onnx for the cached step (the zoo GPT's names and dims), with parity and greedy: with the
    split attention (hf_attention) where the model allows it and it passes both, else with
    transformers' own (which joins past and new inside the graph, a copy of the cache per step)."""
    refused = None
    if step.use_split_attention():
        try:
            with torch.no_grad():  # eager first: a refusal says why (torch.export's report would not)
                step(*_example(geometry, vocab))
            result = _export_step(step, tmp, tokenizer, context=context, geometry=geometry, vocab=vocab)
            refused = result.verdict()[1]
        except Exception as exc:  # any failure of the faster graph: the plain one, and say why in parity.json
            refused = _line(exc)
        if refused is None:
            result.extra["attention"] = "split: past and new columns apart"
            return [result]
        step.use_split_attention(False)
    result = _export_step(step, tmp, tokenizer, context=context, geometry=geometry, vocab=vocab)
    why = refused or "the model does not take a registered attention function"
    result.extra["attention"] = f"transformers (split attention not used: {why})"
    return [result]


def _export_step(
    step: nn.Module,
    tmp: Path,
    tokenizer: Any,
    *,
    context: int,
    geometry: tuple[int, int, int],
    vocab: int,
) -> VariantResult:
    """Write model.onnx and measure it: parity on two batches, greedy generation."""
    L = geometry[0]
    names, outputs = step_names(L)
    example = _example(geometry, vocab)
    path = tmp / "model.onnx"
    dims = {"inputs": _step_dims(context, L)}  # CausalLMStep's *inputs, positionally

    def write() -> None:
        write_onnx(step, example, path, input_names=names, output_names=outputs, dynamic_shapes=dims)

    result = _step(path.name, "fp32", write)
    runner = ort_runner(ort_session(path))
    rows = _token_rows(tokenizer, context)
    eager = torch_runner(step, names, outputs)
    batches = _step_batches(eager, rows, geometry)
    result.checks = measure(runner, eager, batches, classifier_outputs={"logits"})
    prompts = [rows[0][: max(2, context // 4)], rows[1][: max(2, context // 6)]]
    new_tokens = min(16, context - len(prompts[0]))
    result.extra |= greedy_check(runner, _FullForward(step), prompts, new_tokens, geometry,  # type: ignore[arg-type]
                                 contract=IN_PLACE)
    return result


def _example(geometry: tuple[int, int, int], vocab: int) -> tuple[torch.Tensor, ...]:
    """Export's example inputs: 2 rows, 3 new tokens after 2 past columns."""
    L, H, Dh = geometry
    return (
        torch.randint(1, vocab, (2, 3)), torch.arange(3).repeat(2, 1), torch.ones(2, 5, dtype=torch.int64),
        *(torch.randn(2, H, 2, Dh) for _ in range(2 * L)),
    )  # fmt: skip


class _FullForward:
    """transformers' plain forward (no cache): logits (B, T, V) for the greedy reference."""

    def __init__(self, step: nn.Module) -> None:
        self.lm: Any = step.lm

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids).logits  # type: ignore[no-any-return]


def _step_dims(context: int, n_layer: int) -> tuple[dict[int, Any], ...]:
    """The dynamic dims of the step's inputs, in ``step_names`` order."""
    dim = torch.export.Dim
    b, t, p = (
        dim("batch", max=MAX_BATCH),
        dim("sequence", min=1, max=context),
        dim("past", min=0, max=context),
    )
    s = dim("total", min=1, max=2 * context)  # = past + sequence; torch.export infers the relation
    tokens = ({0: b, 1: t}, {0: b, 1: t}, {0: b, 1: s})  # input_ids, position_ids, attention_mask
    return (*tokens, *({0: b, 2: p} for _ in range(2 * n_layer)))  # per layer (B, H, P, Dh)


def _token_rows(tokenizer: Any, context: int) -> list[list[int]]:
    """Four rows of real token ids (the sample texts, joined and cut), each at most ``context`` // 2."""
    stream = [t for text in SAMPLE_TEXTS for t in tokenizer.encode(text + " ")]
    width = max(4, min(24, context // 2))
    stream = (stream * (1 + 4 * width // max(1, len(stream))))[: 4 * width]
    return [stream[i * width : (i + 1) * width] for i in range(4)]


def _step_batches(eager: Runner, rows: list[list[int]], geometry: tuple[int, int, int]) -> list[Arrays]:
    """A prefill (B=1, P=0) and a one-token decode step over 3 left-padded rows (P>0)."""
    L, H, Dh = geometry
    ids = np.array(rows, np.int64)  # (4, T)
    T = ids.shape[1] - 1
    prefill = {"input_ids": ids[:1, :T], "position_ids": np.arange(T, dtype=np.int64)[None],
               "attention_mask": np.ones((1, T), np.int64),
               **_cache_feeds(*_empty(L, 1, H, Dh))}  # fmt: skip
    prompt, mask = ids[1:4, :T].copy(), np.ones((3, T), np.int64)
    for i in range(3):  # rows 1 and 2 are shorter prompts, left-padded
        prompt[i, : i * T // 4], mask[i, : i * T // 4] = 0, 0
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    out = eager({"input_ids": prompt, "position_ids": positions, "attention_mask": mask,
                 **_cache_feeds(*_empty(L, 3, H, Dh))})  # fmt: skip
    key, value = out["new_key"], out["new_value"]  # the prompts' columns (L, 3, H, T, Dh)
    step_mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    decode = {"input_ids": ids[1:4, T : T + 1], "position_ids": step_mask.sum(1, keepdims=True) - 1,
              "attention_mask": step_mask, **_cache_feeds(key, value)}  # fmt: skip
    return [prefill, decode]


def _empty(layers: int, batch: int, heads: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros((layers, batch, heads, 0, head_dim), np.float32)
    return empty, empty


def _cache_feeds(key: np.ndarray, value: np.ndarray) -> Arrays:
    """A whole cache (L, B, H, P, Dh) as the step's per-layer cache inputs."""
    names = past_names(key.shape[0])
    return dict(zip(names, [np.ascontiguousarray(a) for a in (*key, *value)], strict=True))


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
