"""GPT's KV-cache path (`forward_cached`) against full-sequence `forward`: token by token, and
batched with left / right padding hidden by `attention_mask` (continuous batching)."""

from __future__ import annotations

import pytest
import torch

from deepserve.models import build_model
from deepserve.models.gpt import GPT

TOL = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=32, context_length=32, n_layer=2, n_head=2, d_model=16)
    with torch.no_grad():  # random init gives near-uniform logits; sharpen them so argmax is stable
        model.wte.weight.mul_(20)
    return model.eval()  # type: ignore[return-value]


def ones(b: int, n: int) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.long)


def cached(
    gpt: GPT, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, past: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One cached step; the caller's whole cache grows by the new columns the step returns."""
    logits, new_key, new_value = gpt.forward_cached(ids, positions, mask, past)
    assert new_key.shape[3] == ids.shape[1]  # (L, B, H, T, Dh): only the new columns come back
    return logits, [torch.cat([p, n], dim=2) for p, n in zip(past, [*new_key, *new_value], strict=True)]


@torch.no_grad()
def test_cache_token_by_token_equals_full_forward(gpt: GPT) -> None:
    ids = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(0))
    full = gpt(ids)  # (B, T, V)
    past = gpt.empty_cache(2)
    steps = []
    for t in range(ids.shape[1]):
        logits, past = cached(gpt, ids[:, t : t + 1], torch.full((2, 1), t), ones(2, t + 1), past)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
    assert len(past) == 4 and past[0].shape == (2, 2, 10, 8)  # 2 x L of (B, H, P, Dh)
    # prefill of 6 then a chunk of 4 (T > 1 with P > 0): causal inside the chunk
    prefill_pos = torch.arange(6).expand(2, 6)
    logits, past = cached(gpt, ids[:, :6], prefill_pos, ones(2, 6), gpt.empty_cache(2))
    chunk, _ = cached(gpt, ids[:, 6:], torch.arange(6, 10).expand(2, 4), ones(2, 10), past)
    torch.testing.assert_close(torch.cat([logits, chunk], dim=1), full, **TOL)


def greedy_alone(gpt: GPT, prompt: list[int], steps: int) -> torch.Tensor:
    """Next-token logits after the prompt and after each of `steps` greedy tokens: (steps+1, V)."""
    ids = torch.tensor([prompt])
    out = []
    for _ in range(steps + 1):
        out.append(gpt(ids)[0, -1])
        ids = torch.cat([ids, out[-1].argmax().view(1, 1)], dim=1)
    return torch.stack(out)


def greedy_batched(gpt: GPT, prompts: list[list[int]], steps: int, side: str) -> torch.Tensor:
    """Same, all prompts in one batch padded on `side`, decoded with the cache: (B, steps+1, V)."""
    width = max(map(len, prompts))
    rows, masks, positions = [], [], []
    for p in prompts:
        pad = [7] * (width - len(p))  # a non-zero pad id: the mask alone must hide it
        real = [1] * len(p)
        zeros = [0] * len(pad)
        rows.append(pad + p if side == "left" else p + pad)
        masks.append(zeros + real if side == "left" else real + zeros)
        positions.append(zeros + list(range(len(p))) if side == "left" else list(range(len(p))) + zeros)
    mask = torch.tensor(masks)
    empty = gpt.empty_cache(len(prompts))
    logits, past = cached(gpt, torch.tensor(rows), torch.tensor(positions), mask, empty)
    last = torch.tensor([width - 1 if side == "left" else len(p) - 1 for p in prompts])
    step_logits = logits[torch.arange(len(prompts)), last]  # (B, V) at each row's last real token
    out = [step_logits]
    lengths = torch.tensor([len(p) for p in prompts])
    for _ in range(steps):
        mask = torch.cat([mask, ones(len(prompts), 1)], dim=1)
        token = step_logits.argmax(dim=1, keepdim=True)  # (B, 1)
        logits, past = cached(gpt, token, lengths[:, None], mask, past)
        lengths = lengths + 1
        step_logits = logits[:, 0]
        out.append(step_logits)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_batched_padded_decoding_equals_decoding_alone(gpt: GPT, side: str) -> None:
    prompts = [[3, 14, 15, 9, 2, 6], [5, 3]]
    batched = greedy_batched(gpt, prompts, steps=4, side=side)
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(batched[row], greedy_alone(gpt, prompt, steps=4), **TOL)
