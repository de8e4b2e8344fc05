"""Byte-level GPT jobs: next-byte training, the unigram baseline it must beat, and a sample.

The held-out split is the last 10 % of the text by position; its loss is reported in nats per
byte together with perplexity and bits per byte.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from deepserve.models import build_model
from deepserve.training import distributed as ddp
from deepserve.training.config import seed_everything
from deepserve.training.data import BYTE_VOCAB
from deepserve.training.job import Job, finish
from deepserve.training.loop import Batch, fit
from deepserve.training.metrics import language_model_metrics, unigram_cross_entropy
from deepserve.training.textdata import lm_ids

SAMPLE_PROMPT = "The for statement"


def lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch  # (B, T), (B, T)
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: str,
    max_tokens: int,
    context: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> str:
    """Sample bytes after ``prompt`` (recomputing the window each step; the server uses the KV cache)."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.tensor([list(prompt.encode("utf-8"))], device=device)  # (1, T)
    for _ in range(max_tokens):
        logits = model(ids[:, -context:])[:, -1, :].float().cpu() / temperature  # (1, V)
        if top_k is not None:
            kth = torch.topk(logits, top_k).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).to(device)
        ids = torch.cat([ids, nxt.clamp(min=1)], dim=1)  # id 0 is padding, never emitted
    return bytes(ids[0].tolist()).decode("utf-8", errors="replace")


def generation_defaults(config: dict[str, int]) -> dict[str, int | float | None]:
    return {
        "context_length": config["context_length"],
        "max_tokens": 64,
        "temperature": 0.8,
        "top_k": 40,
        "n_layer": config["n_layer"],
        "n_head": config["n_head"],
        "head_dim": config["d_model"] // config["n_head"],
    }


def train_language_model(job: Job, ctx: ddp.DistContext | None = None) -> Path:
    ctx = ctx or ddp.DistContext()
    generator = seed_everything(job.cfg.seed)
    device = ddp.pick_device(ctx)
    model = build_model(job.model_name, **job.model_config).to(device)
    train = ddp.train_loader(job.data.train, job.cfg.batch_size, ctx, generator)
    val = DataLoader(job.data.val, batch_size=64)
    result = fit(
        ddp.wrap(model, ctx, device),
        train,
        val,
        lm_loss,
        job.cfg,
        device=device,
        ctx=ctx,
        progress=job.progress,
        trace_path=job.trace_path,
    )
    if ctx.is_main:
        baseline = unigram_cross_entropy(*lm_ids(job.data), BYTE_VOCAB)
        metrics: dict[str, object] = {
            **language_model_metrics(result.best_val_loss),
            "unigram_baseline_loss": baseline,
            "unigram_baseline_bits_per_byte": baseline / torch.log(torch.tensor(2.0)).item(),
        }
        context = job.model_config["context_length"]
        tokens = int(job.cfg.extra.get("sample_tokens", 200))
        text = sample(model, SAMPLE_PROMPT, tokens, context, seed=job.cfg.seed)
        job.meta.setdefault("generation", generation_defaults(job.model_config))
        finish(job, model, metrics, result, extra_summary={"sample_prompt": SAMPLE_PROMPT, "sample": text})
    return job.checkpoint_path
