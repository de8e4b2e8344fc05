"""``grad_checkpoint``: the same outputs and gradients, less activation memory, and unchanged exports."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from deepserve.export.torchscript import quiet_jit
from deepserve.models import build_model
from deepserve.training.memory import step_peak_bytes

# dropout on: checkpointing must replay the same dropout masks when it recomputes a block
CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "transformer": (
        {"vocab_size": 32, "d_model": 16, "n_head": 2, "n_layer": 2, "d_ff": 32, "max_len": 64,
         "num_classes": 3, "dropout": 0.1},
        lambda b, t: (torch.randint(1, 32, (b, t)), torch.ones(b, t, dtype=torch.long)),
    ),
    "gpt": (
        {"vocab_size": 32, "context_length": 64, "n_layer": 2, "n_head": 2, "d_model": 16, "dropout": 0.1},
        lambda b, t: (torch.randint(0, 32, (b, t)),),
    ),
    "vit": (
        {"image_size": 8, "patch_size": 2, "num_classes": 3, "d_model": 16, "n_head": 2, "n_layer": 2,
         "d_ff": 32, "dropout": 0.1},
        lambda b, t: (torch.rand(b, 1, 8, 8),),
    ),
    "bert": (
        {"vocab_size": 40, "hidden_size": 16, "n_layer": 2, "n_head": 2, "intermediate_size": 32,
         "max_position": 64, "num_classes": 3, "dropout": 0.1},
        lambda b, t: (torch.randint(1, 40, (b, t)), torch.ones(b, t, dtype=torch.long)),
    ),
}  # fmt: skip


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    config, _ = CASES[name]
    torch.manual_seed(0)
    plain = build_model(name, **config)
    checkpointed = build_model(name, **config, grad_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed


def _step(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
    model.train()
    torch.manual_seed(1)  # the same dropout masks in both models
    out = model(*inputs)
    out.float().pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_outputs_and_gradients(name: str) -> None:
    plain, checkpointed = _pair(name)
    inputs = CASES[name][1](3, 12)
    out_a, grads_a = _step(plain, inputs)
    out_b, grads_b = _step(checkpointed, inputs)
    torch.testing.assert_close(out_b, out_a)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", sorted(CASES))
def test_checkpointing_keeps_fewer_activations(name: str) -> None:
    plain, checkpointed = _pair(name)
    inputs = CASES[name][1](16, 48)
    assert step_peak_bytes(checkpointed, inputs) < 0.8 * step_peak_bytes(plain, inputs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_is_the_same_with_the_flag_on(name: str) -> None:
    """Export traces in eval mode, where the flag does nothing: the same TorchScript code and outputs."""
    plain, checkpointed = (m.eval() for m in _pair(name))
    inputs = CASES[name][1](2, 12)
    with quiet_jit(), torch.no_grad():
        traced = [torch.jit.trace(m, inputs, check_trace=False) for m in (plain, checkpointed)]
        assert traced[0].code == traced[1].code
        torch.testing.assert_close(traced[1](*inputs), plain(*inputs))
