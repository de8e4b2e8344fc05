"""Graph plans for the generative checkpoints: VAE (two store models), DCGAN generator, GPT with KV cache."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepserve.export.heldout import held_out
from deepserve.export.onnx_graph import write_onnx
from deepserve.export.plan import GraphPlan, batch_dim, spec, split_batches
from deepserve.export.planners import _Decoder, _Encoder, _image_in
from deepserve.export.serving import ImageModel, ImageOutput
from deepserve.handlers.kv_contract import past_names
from deepserve.models.gpt import GPTWithCache
from deepserve.store import GenerationDefaults, ModelSpec, TensorSpec, TextPreprocessing, Variant
from deepserve.training.checkpoint import Checkpoint


def _output_map(value_range: list[float] | None) -> tuple[list[float], list[float]]:
    lo, hi = value_range or (0.0, 1.0)
    return [1.0 / (hi - lo)], [-lo / (hi - lo)]


def _generation(ckpt: Checkpoint, c: int, h: int, w: int) -> dict[str, Any]:
    return {**ckpt.meta.get("generation", {}), "image_channels": c, "image_height": h, "image_width": w}


def _latent_batches(latents: np.ndarray) -> list[dict[str, np.ndarray]]:
    return split_batches({"latent": latents.astype(np.float32)})


def plan_vae(ckpt: Checkpoint, model: nn.Module, prep: dict[str, Any]) -> list[GraphPlan]:
    """``<name>``: pixels -> latent_mean (embedding); ``<name>-decoder``: latent -> images in [0, 1]."""
    inputs, example = _image_in(prep)
    encoder = ImageModel(_Encoder(model), prep["mean"], prep["std"]).eval()
    with torch.no_grad():
        z_dim = int(encoder(*example).shape[1])
    rows, where = held_out(ckpt.meta)
    enc = GraphPlan(
        "",
        "embedding",
        encoder,
        inputs,
        [spec("latent_mean", "FP32", [-1, z_dim])],
        example,
        {"pixels": {0: batch_dim()}},
        split_batches(rows),
        where,
        max_batch_size=64,
        preprocessing=prep,
    )
    return [enc, _vae_decoder(ckpt, model, encoder, rows, where, prep)]


def _vae_decoder(
    ckpt: Checkpoint, model: nn.Module, encoder: nn.Module, rows: dict[str, np.ndarray], where: str, prep: Any
) -> GraphPlan:
    with (
        torch.no_grad()
    ):  # decoder inputs: the held-out images' latent means (real points of the latent space)
        latents = encoder(torch.from_numpy(rows["pixels"])).numpy()
    z_dim = latents.shape[1]
    scale, shift = _output_map(ckpt.meta.get("decoder_output_range"))
    decoder = ImageOutput(_Decoder(model), scale, shift).eval()
    c, h, w = prep["channels"], prep["height"], prep["width"]
    return GraphPlan(
        "-decoder",
        "image-generation",
        decoder,
        [spec("latent", "FP32", [-1, z_dim])],
        [spec("images", "FP32", [-1, c, h, w])],
        (torch.randn(2, z_dim),),
        {"latent": {0: batch_dim()}},
        _latent_batches(latents),
        "latent means of the encoder on " + where,
        max_batch_size=64,
        preprocessing={"kind": "latent", "latent_dim": z_dim},
        generation=_generation(ckpt, c, h, w),
    )


def plan_generator(ckpt: Checkpoint, model: nn.Module, prep: dict[str, Any]) -> GraphPlan:
    z_dim = int(prep["latent_dim"])
    scale, shift = _output_map(ckpt.meta.get("generator_output_range", [-1.0, 1.0]))
    module = ImageOutput(model, scale, shift).eval()
    example = (torch.randn(2, z_dim),)
    with torch.no_grad():
        c, h, w = module(*example).shape[1:]
    latents = np.random.default_rng(0).standard_normal((64, z_dim))
    return GraphPlan(
        "",
        "image-generation",
        module,
        [spec("latent", "FP32", [-1, z_dim])],
        [spec("images", "FP32", [-1, c, h, w])],
        example,
        {"latent": {0: batch_dim()}},
        _latent_batches(latents),
        "z ~ N(0, I), seed 0",
        max_batch_size=64,
        preprocessing={"kind": "latent", "latent_dim": z_dim},
        generation=_generation(ckpt, c, h, w),
    )


def _gpt_dims(ctx: int, n_layer: int) -> dict[str, Any]:
    dim = torch.export.Dim
    b, t, p = batch_dim(), dim("sequence", min=1, max=ctx), dim("past", min=0, max=ctx)
    s = dim("total", min=1, max=2 * ctx)  # = past + sequence; torch.export infers the relation
    return {
        "input_ids": {0: b, 1: t},
        "position_ids": {0: b, 1: t},
        "attention_mask": {0: b, 1: s},
        **{name: {0: b, 2: p} for name in past_names(n_layer)},
    }


def _gpt_batches(
    module: nn.Module, windows: np.ndarray, cache: tuple[int, int, int]
) -> list[dict[str, np.ndarray]]:
    """A prefill (B=1, P=0) and a one-token decode step (B=3, P>0, left-padded rows) on held-out text."""
    L, H, Dh = cache
    names = past_names(L)
    T = min(24, windows.shape[1] - 1)
    empty = np.zeros((1, H, 0, Dh), np.float32)
    prefill = {
        "input_ids": windows[:1, :T],
        "position_ids": np.arange(T)[None].astype(np.int64),
        "attention_mask": np.ones((1, T), np.int64),
        **dict.fromkeys(names, empty),
    }
    ids, mask = windows[1:4, :T].copy(), np.ones((3, T), np.int64)
    for i in range(3):  # rows 1 and 2 are shorter prompts, left-padded
        ids[i, : 5 * i], mask[i, : 5 * i] = 0, 0
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    with torch.no_grad():
        past = [torch.zeros(3, H, 0, Dh)] * (2 * L)
        _, key, value = module(*(torch.from_numpy(a) for a in (ids, positions, mask)), *past)
    step_mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    decode = {
        "input_ids": windows[1:4, T : T + 1],
        "position_ids": step_mask.sum(1, keepdims=True) - 1,
        "attention_mask": step_mask,
        **dict(zip(names, [*key.numpy(), *value.numpy()], strict=True)),
    }
    return [prefill, decode]


def gpt_prompts(windows: np.ndarray, ctx: int) -> tuple[list[list[int]], int]:
    """Two held-out prompts of different lengths and how many tokens fit after them."""
    n = min(32, ctx // 2)
    prompts = [windows[4, :n].tolist(), windows[5, : max(2, n * 2 // 3)].tolist()]
    return prompts, min(24, ctx - n)


def gpt_io(L: int, H: int, Dh: int, V: int) -> tuple[list[Any], list[Any]]:
    """The in-place cache contract (handlers/kv_contract.py): per-layer pasts in, new columns out."""
    text_in = [spec(n, "INT64", [-1, -1]) for n in ("input_ids", "position_ids", "attention_mask")]
    cache = [spec(n, "FP32", [-1, H, -1, Dh]) for n in past_names(L)]
    outs = [
        spec("logits", "FP32", [-1, -1, V]),
        *(spec(n, "FP32", [L, -1, H, -1, Dh]) for n in ("new_key", "new_value")),
    ]
    return [*text_in, *cache], outs


def _gpt_geometry(model: nn.Module) -> tuple[int, int, int, int, int]:
    cfg: Any = model.config
    ctx, L, H, V = int(cfg.context_length), int(cfg.n_layer), int(cfg.n_head), int(cfg.vocab_size)
    return ctx, L, H, int(cfg.d_model) // H, V


def _gpt_example(L: int, H: int, Dh: int, V: int) -> tuple[torch.Tensor, ...]:
    return (
        torch.randint(1, V, (2, 3)),
        torch.arange(3).repeat(2, 1),
        torch.ones(2, 5, dtype=torch.int64),
        *(torch.randn(2, H, 2, Dh) for _ in range(2 * L)),
    )


def write_gpt_onnx(model: nn.Module, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Write an eager GPT's explicit-KV-cache graph to ``path`` with exactly the names and dynamic
    dims `deepserve export` uses, and return its (inputs, outputs) for a model.json. For tests and
    benchmarks that need a GPT version directory without a trained checkpoint."""
    ctx, L, H, Dh, V = _gpt_geometry(model)
    inputs, outputs = gpt_io(L, H, Dh, V)
    dims = _gpt_dims(ctx, L)
    write_onnx(
        GPTWithCache(model).eval(),
        _gpt_example(L, H, Dh, V),
        path,
        input_names=[t.name for t in inputs],
        output_names=[t.name for t in outputs],
        dynamic_shapes={"inputs": tuple(dims[t.name] for t in inputs)},  # GPTWithCache's *inputs
    )
    return inputs, outputs


def write_gpt_version(
    model: nn.Module, version_dir: Path, *, name: str, source: str | None = None, **generation: Any
) -> ModelSpec:
    """A servable version directory (model.onnx + model.json, fp32 only, no parity run) for an eager
    GPT without a checkpoint: random-weight benchmarks and tests of the generation path."""
    ctx, L, H, Dh, V = _gpt_geometry(model)
    version_dir.mkdir(parents=True)
    inputs, outputs = write_gpt_onnx(model, version_dir / "model.onnx")
    geometry = {"context_length": ctx, "n_layer": L, "n_head": H, "head_dim": Dh, **generation}
    spec = ModelSpec(
        name=name, version=int(version_dir.name), task="text-generation", architecture="gpt",
        inputs=inputs, outputs=outputs, max_batch_size=16,
        preprocessing=TextPreprocessing(tokenizer="bytes", max_length=ctx, vocab_size=V),
        generation=GenerationDefaults(**geometry),
        variants=[Variant(file="model.onnx", format="onnx", precision="fp32", usable=True)],
        created=datetime.now(UTC).isoformat(), torch_version=str(torch.__version__), source=source,
    )  # fmt: skip
    spec.write(version_dir)
    return spec


def plan_gpt(ckpt: Checkpoint, model: nn.Module, prep: dict[str, Any]) -> GraphPlan:
    module = GPTWithCache(model).eval()
    ctx, L, H, Dh, V = _gpt_geometry(model)
    example = _gpt_example(L, H, Dh, V)
    rows, where = held_out(ckpt.meta, rows=8)
    inputs, outs = gpt_io(L, H, Dh, V)
    generation = {
        **ckpt.meta.get("generation", {}),
        "context_length": ctx,
        "n_layer": L,
        "n_head": H,
        "head_dim": Dh,
    }
    return GraphPlan(
        "",
        "text-generation",
        module,
        inputs,
        outs,
        example,
        _gpt_dims(ctx, L),
        _gpt_batches(module, rows["input_ids"], (L, H, Dh)),
        where,
        max_batch_size=16,
        classifier=True,
        int8=True,
        preprocessing=prep,
        generation=generation,
        greedy=gpt_prompts(rows["input_ids"], ctx),
        assets=dict(ckpt.meta.get("assets") or {}),  # a BPE GPT's tokenizer.json
    )
