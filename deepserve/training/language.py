"""GPT jobs: next-token training (bytes, or BPE ids with a tokenizer.json asset), the unigram
baseline it must beat, and a sample.

The held-out split is the last 10 % of the text by position; its loss is reported in nats per
token with perplexity, and in bits per byte of that text, the one scale on
which a byte model and a BPE model compare (``bits_per_byte``; ``bits_per_token`` beside it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from deepserve.models import build_model
from deepserve.training import distributed as ddp
from deepserve.training.bpe import bits_per_byte
from deepserve.training.config import seed_everything
from deepserve.training.data import BYTE_VOCAB, TaskData
from deepserve.training.job import Job, finish
from deepserve.training.loop import Batch, fit
from deepserve.training.metrics import language_model_metrics, unigram_cross_entropy
from deepserve.training.textdata import lm_ids

SAMPLE_PROMPT = "The for statement"


def lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch  # (B, T), (B, T)
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


class _Codec:
    """Text <-> ids for the job's tokenizer: UTF-8 bytes, or the tokenizer.json a BPE job ships."""

    def __init__(self, data: TaskData) -> None:
        from tokenizers import Tokenizer

        text = data.assets.get("tokenizer.json")
        self.tokenizer = Tokenizer.from_str(text) if text is not None else None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8")) if self.tokenizer is None else self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return str(self.tokenizer.decode(ids))

    def text_bytes(self, rows: Tensor) -> int:
        """UTF-8 bytes of the text the token rows stand for (each row decoded alone)."""
        if self.tokenizer is None:
            return rows.numel()
        return sum(len(self.decode(row.tolist()).encode("utf-8")) for row in rows)


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
    codec: _Codec | None = None,
) -> str:
    """Sample tokens after ``prompt`` (recomputing the window each step; the server uses the KV cache);
    temperature 0 is greedy."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    encode = codec.encode if codec is not None else (lambda t: list(t.encode("utf-8")))
    ids = torch.tensor([encode(prompt)], device=device)  # (1, T)
    for _ in range(max_tokens):
        logits = model(ids[:, -context:])[:, -1, :].float().cpu()  # (1, V)
        logits[:, 0] = float("-inf")  # id 0 is padding (bytes) or end-of-text (BPE): never emitted here
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True).to(device)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).to(device)
        ids = torch.cat([ids, nxt], dim=1)
    out = ids[0].tolist()
    return codec.decode(out) if codec is not None else bytes(out).decode("utf-8", errors="replace")


# The served default where a request sends none: at temperature 0 the store's quick GPT answers
# "The for statement" with 40 newlines without it; with 0.3, with varied words and punctuation.
GREEDY_FREQUENCY_PENALTY = 0.3


def generation_defaults(config: dict[str, int], eos_id: int | None = None) -> dict[str, int | float | None]:
    return {
        "context_length": config["context_length"],
        "max_tokens": 64,
        "temperature": 0.8,
        "top_k": 40,
        "frequency_penalty": GREEDY_FREQUENCY_PENALTY,
        "eos_id": eos_id,
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
        codec = _Codec(job.data)
        vocab = int(job.data.preprocessing.get("vocab_size") or BYTE_VOCAB)
        baseline = unigram_cross_entropy(*lm_ids(job.data), vocab)
        targets = job.data.val.tensors[1]
        val_bytes = codec.text_bytes(targets)
        metrics: dict[str, object] = {
            **language_model_metrics(result.best_val_loss),
            # per byte of the validation text: what byte and BPE models compare on
            "bits_per_byte": bits_per_byte(result.best_val_loss, targets.numel(), val_bytes),
            "unigram_baseline_loss": baseline,
            "unigram_baseline_bits_per_byte": bits_per_byte(baseline, targets.numel(), val_bytes),
        }
        context = job.model_config["context_length"]
        tokens = int(job.cfg.extra.get("sample_tokens", 200))
        text = sample(model, SAMPLE_PROMPT, tokens, context, seed=job.cfg.seed, codec=codec)
        greedy = sample(model, SAMPLE_PROMPT, tokens, context, temperature=0, codec=codec)
        eos = job.data.preprocessing.get("pad_id") if codec.tokenizer is not None else None  # <|endoftext|>
        job.meta.setdefault("generation", generation_defaults(job.model_config, eos))
        summary = {"sample_prompt": SAMPLE_PROMPT, "sample": text, "greedy_sample": greedy}
        finish(job, model, metrics, result, extra_summary=summary)
    return job.checkpoint_path
