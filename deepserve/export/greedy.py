"""Greedy generation through an explicit-KV-cache step graph, checked against eager full recompute.

The step graph follows one of the two cache contracts of ``handlers/kv_contract.py`` (in-place for
the zoo GPT and imported Hugging Face LMs, concat for versions exported before it); the cache is
kept whole on the host here. Prompts of different lengths share one batch (left-padded, masked), as
the server's continuous batching does."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from deepserve.export.parity import Runner
from deepserve.handlers.kv_contract import host_step


def greedy_steps(
    step: Runner,
    prompts: list[list[int]],
    new_tokens: int,
    cache_shape: tuple[int, int, int],
    *,
    contract: str,
) -> list[list[int]]:
    """Prefill all prompts (left-padded) then decode ``new_tokens`` tokens one step at a time."""
    n_layer, n_head, head_dim = cache_shape
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :], mask[i, T - len(p) :] = p, 1
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    key = value = np.zeros((n_layer, B, n_head, 0, head_dim), np.float32)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(new_tokens):
        logits, key, value = host_step(step, contract, ids, positions, mask, key, value)
        nxt = logits[:, -1].argmax(-1).astype(np.int64)  # (B,)
        for i, t in enumerate(nxt):
            out[i].append(int(t))
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        ids, positions = nxt[:, None], mask.sum(1, keepdims=True) - 1
    return out


@torch.no_grad()
def greedy_eager(model: nn.Module, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Reference: the eager model's full forward, recomputed for every token, one prompt at a time."""
    out = []
    for p in prompts:
        seq = torch.tensor([p])
        for _ in range(new_tokens):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            seq = torch.cat([seq, nxt], dim=1)
        out.append(seq[0, len(p) :].tolist())
    return out


def greedy_check(
    step: Runner,
    model: nn.Module,
    prompts: list[list[int]],
    new_tokens: int,
    cache_shape: tuple[int, int, int],
    *,
    contract: str,
) -> dict[str, Any]:
    got = greedy_steps(step, prompts, new_tokens, cache_shape, contract=contract)
    want = greedy_eager(model, prompts, new_tokens)
    mismatch = [
        next((j for j, (a, b) in enumerate(zip(g, w, strict=True)) if a != b), None)
        for g, w in zip(got, want, strict=True)
    ]
    first = min((m for m in mismatch if m is not None), default=None)
    return {
        "greedy_generation": {
            "prompts": len(prompts),
            "prompt_lengths": [len(p) for p in prompts],
            "new_tokens": new_tokens,
            "identical": first is None,
            "first_mismatch": first,
        }
    }
