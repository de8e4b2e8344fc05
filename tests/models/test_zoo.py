"""Every registered model: builds from keyword config, has the documented output shape, overfits
one tiny batch, and (GPT aside, see test_gpt_cache.py) traces to TorchScript with a dynamic batch
(and sequence length for text models)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepserve.models import build_model, list_models
from tests.models.zoo_cases import CASES, Case


def first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]


def test_every_model_has_a_case() -> None:
    assert sorted({c.name for c in CASES}) == list_models()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_output_shape_and_config(case: Case) -> None:
    torch.manual_seed(0)
    model = build_model(case.name, **case.config).eval()
    inputs = case.make_inputs(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = first(model(*inputs))
    assert out.shape == case.out_shape(3)
    assert torch.isfinite(out).all()
    # the config dataclass round-trips through build_model (what a checkpoint stores)
    rebuilt = build_model(case.name, **dataclasses.asdict(model.config))
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_overfits_one_batch(case: Case) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = build_model(case.name, **case.config).train()
    inputs, target = case.make_inputs(4, g), case.make_target(4, g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=case.lr)
    losses = []
    for _ in range(30):
        loss = case.loss(model(*inputs), inputs, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}"


@pytest.mark.parametrize("case", [c for c in CASES if c.name != "gpt"], ids=lambda c: c.id)
def test_trace_generalises_to_other_batch_sizes(case: Case) -> None:
    torch.manual_seed(0)
    model = build_model(case.name, **case.config).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        traced = torch.jit.trace(model, case.make_inputs(2, g))
        others = [case.make_inputs(1, g), case.make_inputs(5, g)]
        if case.other_lengths is not None:  # text models must also generalise over T
            others += [case.other_lengths(1, g), case.other_lengths(5, g)]
        for inputs in others:
            torch.testing.assert_close(traced(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
